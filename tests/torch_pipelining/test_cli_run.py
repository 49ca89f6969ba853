"""`sched-trace run --profile torch-pipelining -- python train_pipeline.py`: no edits, spawned ranks traced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

HERE = Path(__file__).resolve().parent

# A sitecustomize that ours chains to: the test's only window into the ranks. It
# records what the profile traced and writes it out when each process exits.
COLLECTOR = textwrap.dedent("""
    import atexit, json, os
    import sched_trace

    recorder = sched_trace.MemoryRecorder()
    sched_trace.register(recorder)

    def dump():
        if recorder.events:
            path = os.path.join(os.environ["TRACE_OUT"], f"{os.getpid()}.json")
            with open(path, "w") as handle:
                json.dump([[e.name, e.rank.pp_rank, dict(e.rank.extra).get("stage_index"), e.microbatch]
                           for e in recorder.events], handle)

    atexit.register(dump)
""")


def test_sched_trace_run_traces_every_spawned_rank_of_an_unmodified_script(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(COLLECTOR)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, TRACE_OUT=str(out), PYTHONPATH=str(site), SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1")
    command = [sys.executable, "-m", "sched_trace.cli", "run", "--profile", "torch-pipelining", "--level", "3",
               "--", sys.executable, str(HERE / "train_pipeline.py"),
               "--world-size", "2", "--schedule", "Interleaved1F1B", "--steps", "1", "--microbatches", "4"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    per_process = [json.loads(path.read_text()) for path in out.glob("*.json")]
    assert len(per_process) == 2, "one traced process per rank; the launcher runs no stage"
    for events in per_process:
        (pp_rank,) = {pp for _, pp, _, _ in events}
        counts = Counter((name, stage, mb) for name, _, stage, mb in events if name in ("pp_forward", "pp_backward"))
        stages = {pp_rank, pp_rank + 2}  # interleaved: rank r holds stages r and r + world size
        expected = {(name, s, mb) for name in ("pp_forward", "pp_backward") for s in stages for mb in range(4)}
        assert set(counts) == expected and set(counts.values()) == {1}
        assert sum(1 for name, *_ in events if name == "pp_step") == 1
        assert any(name == "pp_p2p_wait" for name, *_ in events)
