"""Cold engine steps: what a step's spans cost the scheduler thread when its caches are cold.

In a real engine the traced calls meet their code and data cold (the model's forward
pass ran in between), and what a span costs is mostly the memory it touches. Each step
here is an engine step's shape (a batch and three stages inside it, one with an
attribute) with an 8 MiB buffer written between steps, outside the timing. Compared, in
turns within each repeat: the exporters' buffers in C holding a probe's events as
records, which the frame encoder reads as they are (``_speedups.Ring``, what an install
with a compiler runs), against the same buffers holding event objects (a deque, as
before the ring); with one exporter listening and with three. Each exporter encodes its
frames with the exporters' own encoder (``codec.EventEncoder``) and discards them.
Figures: the scheduler thread's CPU per step (its own clock), the exporter threads' CPU
per step (their own clocks), and the collector's passes per 1,000 steps (its callbacks).
Off (level 0) is given for scale. Then single cold calls, ``self.method(batch)`` after the
same write, the ways taking turns: the bare method, sched-trace's wrapper above the level,
recording one span, a wrapt passthrough (wall clock, medians). Needs the C extension.
"""

from __future__ import annotations

import gc
import statistics
import threading
from collections import deque
from time import perf_counter_ns, thread_time_ns
from typing import Any

import sched_trace
from sched_trace import _native
from sched_trace._api import threads_cpu
from sched_trace._exporter.codec import EventEncoder
from sched_trace.recorder import BackgroundExporter

from .harness import row
from .workload import passthrough

EVICT = bytearray(8 << 20)
# bytearrays, not bytes: a bytearray's slice assignment copies any other source into a new
# 128 KiB buffer first (malloc, memcpy, free each step), which showed up as misses of its own.
_MARKS = [bytearray(bytes(range(256)) * (len(EVICT) // 64 // 256)),
          bytearray(bytes(reversed(range(256))) * (len(EVICT) // 64 // 256))]


class Engine:
    def step(self, batch: list) -> int:
        self.schedule(batch)
        self.execute(batch)
        return self.update(batch)

    def schedule(self, batch: list) -> int:
        return len(batch)

    def execute(self, batch: list) -> int:
        return len(batch)

    def update(self, batch: list) -> int:
        return len(batch)


class Calls:
    """One method, four ways, for cold single calls: ``self.x(batch)`` as a scheduler calls it."""

    def bare(self, batch: list) -> int:
        return len(batch)

    wrapt = passthrough(bare)
    off = sched_trace.stage("cold_call_off", level=9, batch_size="len(batch)")(bare)  # above the level
    on = sched_trace.stage("cold_call_on", level=2, batch_size="len(batch)")(bare)


def _cold_calls(calls: Calls, batch: list, count: int) -> dict[str, float]:
    """Each way's median wall clock of one call after 8 MiB written, in us (the ways take turns)."""
    ways = {"bare": lambda: calls.bare(batch), "wrapt": lambda: calls.wrapt(batch),
            "off": lambda: calls.off(batch), "on": lambda: calls.on(batch)}
    times: dict[str, list[int]] = {way: [] for way in ways}
    for _ in range(count):
        for way, call in ways.items():
            _evict()
            started = perf_counter_ns()
            call()
            times[way].append(perf_counter_ns() - started)
    return {way: statistics.median(spent) / 1000 for way, spent in times.items()}


class Buffered:
    """A built-in exporter's shape: every event hook is a BackgroundExporter's append, whose
    thread encodes each batch as an exporter process's frame and discards it."""

    def __init__(self, name: str, objects: bool) -> None:
        ring = _native.speedups.Ring
        if objects:  # the buffer as it was: event objects in a deque
            _native.speedups.Ring = deque
        try:
            self.front = BackgroundExporter(EventEncoder().encode, name=name, capacity=1 << 20, taken=True)
        finally:
            _native.speedups.Ring = ring
        for hook in ("batch_end", "stage_end"):  # what an exporter plugin takes
            setattr(self, f"sched_trace_{hook}", self.front.append)


def _evict(turn: list = [0]) -> None:  # noqa: B006 (which pattern wrote last)
    """A write to every cache line of 8 MiB (more than the last-level cache's share of a core)."""
    turn[0] ^= 1
    EVICT[::64] = _MARKS[turn[0]]


def _steps(engine: Engine, batch: list, steps: int) -> float:
    """The scheduler thread's CPU per cold step, in us."""
    total = 0
    for _ in range(steps):
        _evict()
        started = thread_time_ns()
        engine.step(batch)
        total += thread_time_ns() - started
    return total / steps / 1000


class Passes:
    """The collector's passes, counted by its callbacks: on the scheduler thread and elsewhere."""

    def __init__(self) -> None:
        self.here = self.elsewhere = 0
        self.thread = threading.get_ident()

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            if threading.get_ident() == self.thread:
                self.here += 1
            else:
                self.elsewhere += 1


def _exporters_cpu(plugins: list) -> float:
    names = {plugin.front.name for plugin in plugins}
    return sum(seconds for name, seconds in threads_cpu().items() if name.removeprefix("sched-trace-") in names)


def run(quick: bool) -> list[dict[str, Any]]:
    if _native.speedups is None or not hasattr(_native.speedups, "Ring"):
        return [row("cold engine steps: not run (the C extension is not built)", 0.0, None, None, "", group="cold")]
    steps, repeats = (300, 3) if quick else (2000, 9)
    sched_trace.configure(level=4, autoload=False)
    target = f"{__name__}:Engine"
    handles = [sched_trace.instrument(f"{target}.step", kind="batch", stage="engine_step", level=1)]
    for name in ("schedule", "execute", "update"):
        handles.append(sched_trace.instrument(f"{target}.{name}", stage=name, level=2, batch_size="len(batch)",
                                              attrs={"running": "len(batch)"} if name == "schedule" else None))
    setups = {(form, count): [Buffered(f"cold-{form}-{count}-{i}", form == "objects") for i in range(count)]
              for form in ("records", "objects") for count in (1, 3)}
    engine, batch = Engine(), list(range(8))
    per_step: dict[Any, list[float]] = {key: [] for key in [*setups, "off"]}
    threads: dict[Any, list[float]] = {key: [] for key in setups}
    passes: dict[Any, list[tuple[int, int]]] = {key: [] for key in setups}
    counter = Passes()
    gc.callbacks.append(counter)
    try:
        for repeat in range(repeats):
            keys = list(setups)
            keys = keys[repeat % len(keys):] + keys[:repeat % len(keys)]
            for key in keys:
                plugins = setups[key]
                for plugin in plugins:
                    sched_trace.register(plugin)
                _steps(engine, batch, 20)  # the exporter threads start
                for plugin in plugins:
                    plugin.front.flush(10.0)
                spent, here, elsewhere = _exporters_cpu(plugins), counter.here, counter.elsewhere
                per_step[key].append(_steps(engine, batch, steps))
                for plugin in plugins:
                    plugin.front.flush(10.0)
                threads[key].append((_exporters_cpu(plugins) - spent) / steps * 1e6)
                passes[key].append((counter.here - here, counter.elsewhere - elsewhere))
                for plugin in plugins:
                    sched_trace.unregister(plugin)
            sched_trace.set_level(0)
            per_step["off"].append(_steps(engine, batch, steps))
            sched_trace.set_level(4)
        listening = setups[("records", 1)]  # single cold calls, one exporter listening
        for plugin in listening:
            sched_trace.register(plugin)
        single = _cold_calls(Calls(), batch, 300 if quick else 3000)
        for plugin in listening:
            sched_trace.unregister(plugin)
    finally:
        gc.callbacks.remove(counter)
        for handle in handles:
            handle.uninstrument()
        for plugins in setups.values():
            for plugin in plugins:
                plugin.front.shutdown(5.0)
    off = statistics.median(per_step["off"])
    note = (f"{steps:,} steps x {repeats} repeats each, an 8 MiB write between steps; 4 spans a step; "
            f"off (level 0): {off:.2f} us/step")
    rows = [row(f"cold call: {text} vs the bare method", single[way], single["bare"], single[way] / single["bare"],
                "us/call", group="cold", note="self.method(batch) after 8 MiB written, wall clock, median of "
                f"{300 if quick else 3000:,} calls each, the ways taking turns; a target instrument() leaves "
                "dormant above the level is the bare method")
            for way, text in (("off", "sched-trace's wrapper, above the level (off)"),
                              ("on", "sched-trace recording one span (one exporter's buffer listening)"),
                              ("wrapt", "a wrapt passthrough"))]
    for count in (1, 3):
        (records, objects), ratio = _paired(per_step, count)
        rows.append(row(f"cold engine step, {count} exporter(s): scheduler-thread CPU, buffers of records vs of "
                        f"event objects", records, objects, ratio, "us/step", group="cold",
                        note=f"{note}; above off: {records - off:.2f} vs {objects - off:.2f} us"))
        (records, objects), ratio = _paired(threads, count)
        rows.append(row(f"cold engine step, {count} exporter(s): the exporter threads' CPU, records vs event objects",
                        records, objects, ratio, "us/step", group="cold",
                        note="each thread's own clock, its frames encoded (codec.EventEncoder) and discarded"))
        here, elsewhere = ({form: statistics.median(p[which] for p in passes[(form, count)]) * 1000 / steps
                            for form in ("records", "objects")} for which in (0, 1))
        rows.append(row(f"cold engine step, {count} exporter(s): the collector's passes per 1,000 steps, records vs "
                        f"event objects", here["records"] + elsewhere["records"],
                        here["objects"] + elsewhere["objects"], None, "passes", group="cold",
                        note=f"on the scheduler thread {here['records']:.1f} vs {here['objects']:.1f}, on the "
                             f"exporter threads {elsewhere['records']:.1f} vs {elsewhere['objects']:.1f}"))
    return rows


def _paired(values: dict, count: int) -> tuple[tuple[float, float], float]:
    """The medians of records and objects, and the median of their per-repeat ratios."""
    records, objects = values[("records", count)], values[("objects", count)]
    ratios = [r / o for r, o in zip(records, objects) if o > 0]
    return (statistics.median(records), statistics.median(objects)), statistics.median(ratios) if ratios else 0.0
