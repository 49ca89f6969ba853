"""The torch-pipelining profile keeps its trace contract and snapshot across gloo rank processes.

``sched-trace run --profile torch-pipelining -- python train_pipeline.py`` spawns two
gloo ranks (torch.multiprocessing.spawn) that each run two stages (Interleaved1F1B);
the ``sched_trace_capture`` fixture gathers what every rank emitted. If a release of
torch renames a target, the contract names the stage and the rank that went quiet,
and the snapshot shows the line that changed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sched_trace.contracts import Contract

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

HERE = Path(__file__).resolve().parent
RANKS = ["PP0", "PP1"]
# Every stage the profile declares, on both ranks (the zero-bubble "W" aside: 1F1B has none).
CONTRACT = (Contract.from_profile("torch-pipelining", ranks=RANKS, skip=["pp_backward_weight"])
            .nested("pp_forward", inside="pp_step")
            .nested("pp_backward", inside="pp_step")
            .microbatches("pp_forward", per="pp_step", expected=4)
            .microbatches("pp_backward", per="pp_step", expected=4)
            .attributes("pp_forward", "pp_mb_id", "bid")
            .attributes("pp_step", "schedule", "n_microbatches"))


def test_interleaved_1f1b_on_two_gloo_ranks_keeps_its_contract_and_snapshot(
        tmp_path: Path, sched_trace_capture, sched_trace_snapshot) -> None:
    command = [sys.executable, "-m", "sched_trace.cli", "run", "--profile", "torch-pipelining", "--level", "3",
               "--", sys.executable, str(HERE / "train_pipeline.py"),
               "--world-size", "2", "--schedule", "Interleaved1F1B", "--steps", "2", "--microbatches", "4"]
    env = sched_trace_capture.environ()
    env["SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trace = CONTRACT.check(sched_trace_capture)
    assert len({e.rank.pid for e in trace.events}) == 2  # the ranks, not the launcher
    sched_trace_snapshot.assert_match(trace)
