"""Instruction counts (callgrind) for the hot path, where timings are too noisy.

Each case runs in a child process under ``valgrind --tool=callgrind`` twice, with
N and N + 10,000 calls; the difference divided by 10,000 is the instructions per
call, start-up excluded. Only the calling (scheduler) thread is counted
(``--separate-threads=yes``): an exporter thread's work is not the scheduler's.
Deterministic enough to compare code versions on a busy machine. Skipped with
``--quick`` and when valgrind is not installed.

The method is the workload's ``run_batch(batch, mb_id)`` with ``microbatch``,
``batch_size`` and ``requests`` extractors, bound once (the strict case: no bound
wrapper built per call). The traced rows run the C hot path (``sched_trace._speedups``)
where it is built; the ``pure Python`` rows set ``SCHED_TRACE_PURE_PYTHON=1`` (the
generated Python template). ``floor`` is the least a Python wrapper can do for the same
event: one hand-written frame building it, no span stack, no extractor calls, handed
to the same buffer-append hook as the built-in exporters' (a list-append plugin keeps
every event, and the collector's passes over them count too). The ``decorated`` method is
a wrapt proxy in the class (what ``@sched_trace.stage`` makes); the ``instrument()'s
method in the class`` rows patch a plain method of the same class with
``instrument()``, which puts its C ``TracedMethod`` there (``_instrument.traced_method``;
a pure-Python function without the extension).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .harness import row

CASES = {
    "bare": ("bare", "none"),
    "wrapt": ("wrapt", "none"),
    "off": ("traced", "none"),
    "above level": ("fine", "list"),
    "on, list-append plugin": ("traced", "list"),
    "on, built-in exporter hook (buffer append)": ("traced", "exporter"),
    "on, keep_if drops an idle call": ("idle", "list"),
    "off, pure Python": ("traced", "none", "pure"),
    "on, built-in exporter hook, pure Python": ("traced", "exporter", "pure"),
    "floor of a Python wrapper: the same event by hand in one frame": ("floor", "exporter"),
    "off, instrument()'s method in the class": ("instrumented", "none"),
    "on, instrument()'s method in the class, built-in exporter hook": ("instrumented", "exporter"),
}
# self.run_batch(...) looked up on the instance at every call, as a scheduler calls it: the
# method's binding counts too (wrapt's BoundFunctionWrapper, or sched-trace's bound method).
PER_LOOKUP = {
    "wrapt": ("wrapt", "none", "", "lookup"),
    "off": ("traced", "none", "", "lookup"),
    "on, built-in exporter hook (buffer append)": ("traced", "exporter", "", "lookup"),
    "off, instrument()'s method in the class": ("instrumented", "none", "", "lookup"),
    "on, instrument()'s method in the class, built-in exporter hook": ("instrumented", "exporter", "", "lookup"),
}
LIMITS = {"off": 1.05, "above level": 1.05, "on, list-append plugin": 3.0,
          "on, built-in exporter hook (buffer append)": 3.0, "on, keep_if drops an idle call": 3.5,
          "off, pure Python": 1.05}
EXTRA = 10000
_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.M)


def child(kind: str, listening: str, calls: int, how: str = "prebound") -> None:
    from . import workload

    if listening == "list":
        workload.configure(plugins=(workload.ListPlugin(),), level=4)
    elif listening == "exporter":
        workload.configure(plugins=(_null_exporter_plugin(),), level=4)
    if kind == "instrumented":
        workload.instrument_method()
    loop = _floor(workload) if kind == "floor" else workload.caller(kind, prebound=how == "prebound")
    loop(200 + calls)


def _null_exporter_plugin() -> Any:
    """A built-in-style plugin: its hook is the processor's buffer append; the exporter does nothing."""
    from sched_trace.export import Exporter, ExporterPlugin

    class Null(Exporter):
        def export(self, events: Any) -> None:
            pass

    return ExporterPlugin(Null, "null", process=False, requests=False)


def _floor(workload: Any) -> Callable[[int], None]:
    """The bench event built by hand in the wrapper's one frame: what pure Python costs at least."""
    import itertools
    from time import monotonic_ns

    import wrapt

    from sched_trace import StageEvent
    from sched_trace.export import current_rank

    calls = workload.get_manager().stage_end
    rank, next_id, new = current_rank(), itertools.count(1).__next__, tuple.__new__

    @wrapt.decorator
    def floor(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        start = monotonic_ns()
        try:
            return wrapped(*args)
        finally:
            batch = args[0]
            event = new(StageEvent, ("bench_run_batch", 4, start, monotonic_ns(), rank, args[1], None,
                                     len(batch.reqs), {"requests": batch.rids}, None, next_id(), 0))
            for function, _ in calls:
                function(event)

    class Scheduler(workload.Scheduler):  # bound as the traced method is: a wrapper in the class
        run_batch_floor = floor(workload.Scheduler.run_batch)

    function, batch = Scheduler().run_batch_floor, workload.Batch(1)
    return lambda n: workload._loop_prebound(function, batch, n)


def _instructions(kind: str, listening: str, calls: int, pure: str = "", how: str = "prebound") -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONHASHSEED="0")
    if pure:
        env["SCHED_TRACE_PURE_PYTHON"] = "1"
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
             sys.executable, "-m", "benchmarks.bench_instructions", kind, listening, str(calls), how],
            cwd=root, capture_output=True, text=True, timeout=600, check=True, env=env,
        )
        main = sorted(glob.glob(out + "-*"))[0]  # thread 1: the one that made the calls
        with open(main, encoding="utf-8") as handle:
            return int(_TOTALS.search(handle.read()).group(1))


def _per_call(case: tuple[str, ...]) -> float:
    return (_instructions(*case[:2], 1000 + EXTRA, *case[2:]) - _instructions(*case[:2], 1000, *case[2:])) / EXTRA


def run(quick: bool) -> list[dict[str, Any]]:
    group = "instructions per call (callgrind, pre-bound, scheduler thread)"
    if quick or shutil.which("valgrind") is None:
        reason = "--quick" if quick else "valgrind not installed"
        return [row(f"skipped ({reason})", float("nan"), None, None, "", group=group)]
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        counts = dict(zip(CASES, pool.map(_per_call, CASES.values())))
        looked_up = dict(zip(PER_LOOKUP, pool.map(_per_call, PER_LOOKUP.values())))
    wrapt = counts["wrapt"]
    rows = [row("wrapt passthrough vs bare call", wrapt, counts["bare"], wrapt / counts["bare"], "instr/call",
                group=group)]
    for name in list(CASES)[2:]:
        ratio = counts[name] / wrapt
        limit = LIMITS.get(name)
        rows.append(row(f"traced, {name} vs wrapt" if not name.startswith("floor") else f"{name} vs wrapt",
                        counts[name], wrapt, ratio, "instr/call",
                        target=f"<= {limit:g}x" if limit else None, met=ratio <= limit if limit else None,
                        group=group))
    wrapt_looked_up = looked_up["wrapt"]
    for name in list(PER_LOOKUP)[1:]:
        rows.append(row(f"self.run_batch(): traced, {name} vs wrapt", looked_up[name], wrapt_looked_up,
                        looked_up[name] / wrapt_looked_up, "instr/call", group=group,
                        note="the method looked up on the instance at every call: binding included"))
    return rows


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
