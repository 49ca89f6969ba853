"""Where a cold step's spans miss the caches, under callgrind's cache simulation.

    python -m benchmarks.cold_misses [--top N]

bench_cold's engine step (a batch and three stages inside it: four spans) after 8 MiB
written, run in a child under ``valgrind --tool=callgrind --cache-sim=yes`` with a
32 KiB first level and a 4 MiB last level (a core's share), 200 and 700 steps; the
difference over 500 is what one step costs, start-up excluded. Three cases: untraced,
traced with every gate shut (level 0), traced with one exporter's buffer listening
(bench_cold's ``Buffered``: what a built-in exporter plugin takes). Printed per step
against untraced: instructions, and the instruction fetches and data reads and writes
that miss the last level (each a trip to memory); then, for the listening case, the
functions whose own code had the most of those misses. Only the stepping thread is
counted. Deterministic: the figures do not depend on the machine's load, where the cold
step's time (bench_cold) does. Needs valgrind.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

CASES = ("untraced", "off", "on")
STEPS = (200, 700)
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=4194304,16,64"]
MISSES = ("ILmr", "DLmr", "DLmw")


def child(case: str, steps: int) -> None:
    import sched_trace

    from .bench_cold import Buffered, Engine, _evict

    if case != "untraced":
        plugins = [Buffered("cold-misses", False)] if case == "on" else []
        sched_trace.configure(level=4 if case == "on" else 0, plugins=plugins, autoload=False)
        target = f"{Engine.__module__}:Engine"
        sched_trace.instrument(f"{target}.step", kind="batch", stage="engine_step", level=1)
        for name in ("schedule", "execute", "update"):
            sched_trace.instrument(f"{target}.{name}", stage=name, level=2, batch_size="len(batch)")
    engine, batch = Engine(), list(range(8))
    for _ in range(steps):
        _evict()
        engine.step(batch)


def _profile(case: str, steps: int, directory: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(directory, f"{case}-{steps}.out")
    env = dict(os.environ, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONHASHSEED="0")
    subprocess.run(["valgrind", "--tool=callgrind", "--cache-sim=yes", "--separate-threads=yes", *CACHES,
                    f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.cold_misses", "--child", case,
                    str(steps)], cwd=root, capture_output=True, check=True, timeout=1200, env=env)
    return sorted(glob.glob(out + "-*"))[0]  # thread 1: the one that stepped


def totals(path: str) -> dict[str, int]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    events = re.search(r"^events:\s*(.*)$", text, re.M).group(1).split()
    values = re.search(r"^(?:summary|totals):\s*(.*)$", text, re.M).group(1).split()
    return dict(zip(events, map(int, values)))


def by_function(path: str) -> dict[str, list[int]]:
    """Each function's own (exclusive) last-level misses, from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100",
                          f"--show={','.join(MISSES)}", path], capture_output=True, text=True, check=True).stdout
    rows: dict[str, list[int]] = {}
    number = r"\s*([\d,]+|\.)(?: \([^)]*\))?"
    for line in out.splitlines():
        match = re.match(number * len(MISSES) + r"\s+(\S.*)$", line)
        if match is None or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r"\s*\[.*\]$", "", match.group(len(MISSES) + 1)).split(":")[-1]
        values = [0 if v == "." else int(v.replace(",", "")) for v in match.groups()[:len(MISSES)]]
        rows[name] = [a + b for a, b in zip(rows.get(name, [0] * len(MISSES)), values)]
    return rows


def main(top: int) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks.cold_misses: valgrind is not installed")
    with tempfile.TemporaryDirectory() as directory, ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        runs = [(case, steps) for case in CASES for steps in STEPS]
        paths = dict(zip(runs, pool.map(lambda run: _profile(*run, directory), runs)))
        extra = STEPS[1] - STEPS[0]
        per_step = {case: {k: (totals(paths[(case, STEPS[1])])[k] - totals(paths[(case, STEPS[0])])[k]) / extra
                           for k in ("Ir", *MISSES)} for case in CASES}
        base = per_step["untraced"]
        print("per cold four-span step, against untraced (simulated 32 KiB L1, 4 MiB last level):")
        for case in CASES[1:]:
            figures = ", ".join(f"{k} {per_step[case][k] - base[k]:+,.0f}" for k in ("Ir", *MISSES))
            print(f"  {case:4s} {figures}")
        on = [by_function(paths[("on", steps)]) for steps in STEPS]
        off = [by_function(paths[("untraced", steps)]) for steps in STEPS]
        names = set().union(*on, *off)
        zero = [0] * len(MISSES)

        def step_misses(name: str) -> list[float]:
            return [((on[1].get(name, zero)[i] - on[0].get(name, zero)[i])
                     - (off[1].get(name, zero)[i] - off[0].get(name, zero)[i])) / extra for i in range(len(MISSES))]

        ranked = sorted(((step_misses(name), name) for name in names), key=lambda row: -sum(row[0]))
        print(f"the {top} functions with the most misses of their own per step, listening against untraced:")
        for misses, name in ranked[:top]:
            print("  " + " ".join(f"{k} {v:5.1f}" for k, v in zip(MISSES, misses)) + f"  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
    else:
        main(args.top)
