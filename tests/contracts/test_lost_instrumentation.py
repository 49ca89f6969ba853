"""When the engine renames a target, its trace contract fails naming the stage and the ranks.

The serving example (spawned PP rank processes, gloo send/recv) is copied and its
scheduler's ``run_batch`` renamed, as an engine release would; it runs under the
example's unchanged configuration. The contract that tests/serving keeps, and its
recorded snapshot, now fail with messages a person can act on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sched_trace import snapshots
from sched_trace.contracts import ContractError, Trace

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = (REPO / "tests" / "serving" / "__snapshots__" / "test_serving_example"
            / "test_the_trace_keeps_its_contract_and_snapshot.txt")


def renamed_engine(root: Path) -> Path:
    """A copy of examples/ whose scheduler calls its forward pass ``forward_batch``."""
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__", "sched-trace-out"))
    scheduler = root / "examples" / "serving" / "scheduler.py"
    source, renamed = re.subn(r"\brun_batch\(", "forward_batch(", scheduler.read_text())
    assert renamed == 2  # the definition and its one call
    scheduler.write_text(source)
    return root


def test_a_renamed_engine_method_fails_the_contract_by_stage_and_rank(tmp_path: Path, sched_trace_capture) -> None:
    from tests.serving.test_serving_example import ARGS, CONFIG, SERVING_CONTRACT

    engine = renamed_engine(tmp_path / "src")
    env = {k: v for k, v in sched_trace_capture.environ().items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(engine), str(REPO)])  # the renamed copy comes first
    env["SCHED_TRACE_BLOCK"] = "otel,perfetto,prometheus"
    command = [sys.executable, "-m", "sched_trace.cli", "run", "--config", str(CONFIG), "--",
               sys.executable, "-m", "examples.serving", *ARGS]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Scheduler.run_batch" in done.stderr  # sched-trace warned at exit, which CI does not read

    trace = sched_trace_capture.trace()
    with pytest.raises(ContractError) as caught:
        SERVING_CONTRACT.check(trace)
    message = str(caught.value)
    for rank in ("PP0", "PP1"):
        assert f"stage 'run_batch_cpu' missing on {rank}: {rank} emitted get_next_batch_to_run x" in message
    assert "attributes of 'run_batch_cpu': no 'run_batch_cpu' span was emitted" in message
    assert message.count("\n  - ") == 3, message  # and nothing else: the other stages still hold

    with pytest.raises(snapshots.SnapshotMismatch) as mismatch:
        snapshots.check(trace, SNAPSHOT, update=False, counts=False)
    lines = str(mismatch.value).splitlines()
    for rank in ("PP0 DP0 TP0", "PP1 DP0 TP0"):
        assert (f"  - scheduler_step > run_batch_cpu on {rank}  "
                "[stage, level 4; keys: batch_size, bid, forward_mode, pp_mb_id, requests]") in lines
        assert f"  + scheduler_step > run_batch_cpu x0 on {rank}" in lines
    assert len([line for line in lines if line.startswith(("  - ", "  + "))]) == 4
