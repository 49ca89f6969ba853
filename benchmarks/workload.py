"""A scheduler-shaped workload shared by the bench modules, and its plugins.

The measured method does nothing, so every figure is pure overhead: the bare call,
the same call under a plain wrapt passthrough wrapper (the floor for any
wrapt-based instrumentation), and the same call traced by sched-trace.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import shutil
import tempfile
from typing import Any, Callable, Optional

import wrapt

import sched_trace
from sched_trace._manager import get_manager


@wrapt.decorator
def passthrough(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    return wrapped(*args, **kwargs)


class Request:
    __slots__ = ("rid",)

    def __init__(self, rid: int) -> None:
        self.rid = rid


class Batch:
    """What an SGLang-style scheduler hands to ``run_batch``."""

    def __init__(self, size: int) -> None:
        self.reqs = [Request(i) for i in range(size)]
        self.rids = [f"req-{i}" for i in range(size)]


class Scheduler:
    """One method, four ways: bare, wrapt passthrough, traced at level 4, traced at level 8."""

    def run_batch(self, batch: Batch, mb_id: int) -> int:
        return mb_id

    run_batch_wrapt = passthrough(run_batch)
    run_batch_traced = sched_trace.stage(
        "bench_run_batch", level=4, microbatch="mb_id",
        batch_size="len(batch.reqs)", requests="batch.rids",
    )(run_batch)
    # Same declaration, finer level: off while the configured level is 4.
    run_batch_fine = sched_trace.stage(
        "bench_run_batch_fine", level=8, microbatch="mb_id",
        batch_size="len(batch.reqs)", requests="batch.rids",
    )(run_batch)

    def run_batch_instrumented(self, batch: Batch, mb_id: int) -> int:
        """run_batch again, for instrument() to patch (instrument_method): a plain function
        in the class, where the rows above are wrapt proxies the decorator made."""
        return mb_id

    def poll(self, batch: Batch, mb_id: int) -> None:
        return None

    # A busy-poll that finds nothing to do: keep_if drops it (counted, no event).
    poll_idle = sched_trace.stage(
        "bench_poll", level=4, microbatch="mb_id", batch_size="len(batch.reqs)", requests="batch.rids",
        keep_if="result is not None",
    )(poll)

def _loop_bare(scheduler: Scheduler, batch: Batch, n: int) -> None:
    for i in range(n):
        scheduler.run_batch(batch, i)


def _loop_wrapt(scheduler: Scheduler, batch: Batch, n: int) -> None:
    for i in range(n):
        scheduler.run_batch_wrapt(batch, i)


def _loop_traced(scheduler: Scheduler, batch: Batch, n: int) -> None:
    for i in range(n):
        scheduler.run_batch_traced(batch, i)


def instrument_method() -> Any:
    """instrument() on run_batch_instrumented, with run_batch_traced's declaration."""
    return sched_trace.instrument(f"{__name__}:Scheduler.run_batch_instrumented", stage="bench_run_batch_instr",
                                  level=4, microbatch="mb_id", batch_size="len(batch.reqs)", requests="batch.rids")


def _loop_instrumented(scheduler: Scheduler, batch: Batch, n: int) -> None:
    for i in range(n):
        scheduler.run_batch_instrumented(batch, i)


def _loop_fine(scheduler: Scheduler, batch: Batch, n: int) -> None:
    for i in range(n):
        scheduler.run_batch_fine(batch, i)


LOOPS = {"bare": _loop_bare, "wrapt": _loop_wrapt, "traced": _loop_traced, "fine": _loop_fine,
         "instrumented": _loop_instrumented}


ATTRIBUTES = {"bare": "run_batch", "wrapt": "run_batch_wrapt", "traced": "run_batch_traced",
              "fine": "run_batch_fine", "idle": "poll_idle", "instrumented": "run_batch_instrumented"}


def _loop_prebound(function: Callable[..., Any], batch: Batch, n: int) -> None:
    for i in range(n):
        function(batch, i)


def caller(kind: str, batch_size: int = 1, prebound: bool = False) -> Callable[[int], None]:
    """``case(n)``: n calls of one way of the method.

    By default the attribute is looked up on the instance for every call, as a
    scheduler's ``self.run_batch(batch)`` does (wrapt then builds a bound wrapper per
    call); ``prebound`` calls a method bound once, which leaves only the wrapper.
    """
    scheduler, batch = Scheduler(), Batch(batch_size)
    if prebound:
        function = getattr(scheduler, ATTRIBUTES[kind])
        return lambda n: _loop_prebound(function, batch, n)
    loop = LOOPS[kind]
    return lambda n: loop(scheduler, batch, n)


class ListPlugin:
    """The minimal in-memory plugin: appends end events to a list."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def sched_trace_stage_end(self, event: Any) -> None:
        self.events.append(event)

    def sched_trace_batch_end(self, event: Any) -> None:
        self.events.append(event)


def entry_point_plugin(name: str) -> Optional[Any]:
    """Instantiate the installed plugin ``name`` from the ``sched_trace`` entry points, or None."""
    for ep in importlib.metadata.entry_points(group="sched_trace"):
        if ep.name == name:
            plugin = ep.load()
            return plugin() if isinstance(plugin, type) else plugin
    return None


def configure(plugins: tuple = (), level: int = 4, settings: Optional[dict] = None) -> None:
    """Configure sched-trace for a benchmark: no autoload, only the given plugins.

    A plugin may be given as ``(plugin, name)`` to register it under its entry-point name.
    """
    manager = get_manager()
    for _, plugin in list(manager.list_name_plugin()):
        manager.unregister(plugin)
    for item in plugins:
        plugin, name = item if isinstance(item, tuple) else (item, None)
        sched_trace.register(plugin, name=name)
    sched_trace.configure(level=level, config={"plugins": settings or {}}, autoload=False)


def reset() -> None:
    """Unregister every plugin, shut exporters down, delete their output (between bench modules)."""
    sched_trace.shutdown(timeout=10.0)
    manager = get_manager()
    for _, plugin in list(manager.list_name_plugin()):
        manager.unregister(plugin)
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)


_scratch: list[str] = []


def scratch_dir() -> str:
    """A temporary directory for exporter output, deleted by reset() (a full run writes GBs)."""
    path = tempfile.mkdtemp(prefix="sched-trace-bench-")
    _scratch.append(path)
    return path


atexit.register(reset)  # registered after sched-trace's own handler, so it runs first


def plugin_settings(name: str, directory: str) -> dict[str, Any]:
    """Settings that keep an exporter plugin's output in ``directory`` (local files only)."""
    if name in ("otel", "perfetto"):
        return {"directory": directory}
    return {}
