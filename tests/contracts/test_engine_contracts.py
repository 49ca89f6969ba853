"""A real vLLM V1 engine keeps the ``vllm`` profile's trace contract and snapshot.

tests/vllm/tiny_vllm.py (a 2-layer random-weight Llama on the CPU, in .venv-vllm) runs
in-process with the profile; its events reach this test through ``sched_trace_capture``.
Eight tokens per request, so the driver's abort (after four engine steps) always cuts its
request short: the snapshot holds an ``aborted`` phase every run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .engines import vllm_contract
from .test_check_engines import REPO, VLLM_PYTHON, require

DRIVER = REPO / "tests" / "vllm" / "tiny_vllm.py"


def test_vllm_in_process_keeps_its_trace_contract_and_snapshot(tmp_path: Path, sched_trace_capture,
                                                                sched_trace_snapshot) -> None:
    require(VLLM_PYTHON.exists(), "vLLM venv at .venv-vllm", "vllm.sh")
    env = {k: v for k, v in sched_trace_capture.environ().items() if not k.startswith("VIRTUAL_ENV")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins" / "otel")]),
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    done = subprocess.run([str(VLLM_PYTHON), str(DRIVER), str(tmp_path / "model"), str(tmp_path / "out.json"),
                           "--requests", "4", "--tokens", "8", "--trace"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    trace = vllm_contract().check(sched_trace_capture)
    assert len({e.request_id for e in trace.requests}) >= 4
    # How many steps vLLM takes is vLLM's business: the shape without counts.
    sched_trace_snapshot.assert_match(trace, counts=False)
