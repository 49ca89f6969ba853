"""Instruction counts (callgrind) for the hot path, where timings are too noisy.

Each case runs in a child process under ``valgrind --tool=callgrind`` twice, with
N and N + 10,000 calls; the difference divided by 10,000 is the instructions per
call, start-up excluded. Deterministic enough to compare code versions on a busy
machine. Skipped with ``--quick`` and when valgrind is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .harness import row

CASES = {
    "bare": ("bare", False),
    "wrapt": ("wrapt", False),
    "off": ("traced", False),
    "above level": ("fine", True),
    "on, list-append plugin": ("traced", True),
}
EXTRA = 10000
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def child(kind: str, listening: bool, calls: int) -> None:
    from . import workload

    if listening:
        workload.configure(plugins=(workload.ListPlugin(),), level=4)
    workload.caller(kind, prebound=True)(200 + calls)


def _instructions(kind: str, listening: bool, calls: int) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "benchmarks.bench_instructions", kind, str(int(listening)), str(calls)],
        cwd=root, capture_output=True, text=True, timeout=600, check=True,
        env=dict(os.environ, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONHASHSEED="0"),
    )
    return int(_COLLECTED.search(done.stderr).group(1))


def _per_call(case: tuple[str, bool]) -> float:
    kind, listening = case
    return (_instructions(kind, listening, 1000 + EXTRA) - _instructions(kind, listening, 1000)) / EXTRA


def run(quick: bool) -> list[dict[str, Any]]:
    group = "instructions per call (callgrind, pre-bound)"
    if quick or shutil.which("valgrind") is None:
        reason = "--quick" if quick else "valgrind not installed"
        return [row(f"skipped ({reason})", float("nan"), None, None, "", group=group)]
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        counts = dict(zip(CASES, pool.map(_per_call, CASES.values())))
    wrapt = counts["wrapt"]
    limits = {"off": 1.2, "above level": 1.2, "on, list-append plugin": 10.0}
    rows = [row("wrapt passthrough vs bare call", wrapt, counts["bare"], wrapt / counts["bare"], "instr/call",
                group=group)]
    for name in ("off", "above level", "on, list-append plugin"):
        ratio = counts[name] / wrapt
        rows.append(row(f"traced, {name} vs wrapt", counts[name], wrapt, ratio, "instr/call",
                        target=f"<= {limits[name]:g}x", met=ratio <= limits[name], group=group))
    return rows


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]))
