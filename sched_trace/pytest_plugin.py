"""pytest fixtures for users' tests (entry point ``pytest11``).

``sched_trace_recorder`` configures sched-trace for one test with an in-memory
recorder and no autoloaded plugins, yields the recorder (``events``,
``stages(name)``, ``by_stage``, ``by_rank(pp_rank=1)``, ``by_microbatch``), and
afterwards removes every instrumentation the test added and restores the level.
Mark a test ``@pytest.mark.sched_trace(level=2)`` to trace at another level.

``sched_trace_capture`` does the same for this process and every process the test
starts (ranks, engine workers): they inherit ``SCHED_TRACE_CAPTURE_DIR`` (pass
``sched_trace_capture.environ(env)`` to a subprocess given an environment of its
own) and write their events there; ``sched_trace_capture.trace()`` reads them all
into a :class:`sched_trace.contracts.Trace` for a contract or a snapshot.

``sched_trace_snapshot.assert_match(trace)`` compares the trace's shape with the file
beside the test (``__snapshots__/<module>/<test>.txt``);
``pytest --sched-trace-snapshot-update`` writes it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("sched-trace")
    group.addoption("--sched-trace-snapshot-update", action="store_true", default=False,
                    help="write the sched-trace snapshots of the tests that run instead of comparing them")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "sched_trace(level=N): trace level for the sched_trace_recorder fixture")


class _Traced:
    """Register a plugin and set the level for one test; undo both and the test's instrumentation."""

    def __init__(self, request: Any, plugin: object, name: str) -> None:
        from sched_trace import _stages as stages
        from sched_trace._instrument import handles

        marker = request.node.get_closest_marker("sched_trace")
        self.level = marker.kwargs.get("level", stages.MAX_LEVEL) if marker else stages.MAX_LEVEL
        self.before = {id(h) for h in handles()}
        self.previous_level = stages.get_level()
        self.plugin, self.name = plugin, name

    def __enter__(self) -> None:
        from sched_trace import _stages as stages
        from sched_trace._manager import get_manager

        get_manager().register(self.plugin, name=self.name)
        stages.set_level(self.level)

    def __exit__(self, *exc: Any) -> None:
        from sched_trace import _stages as stages
        from sched_trace import reset_stats
        from sched_trace._instrument import handles
        from sched_trace._manager import get_manager

        for handle in handles():
            if id(handle) not in self.before:
                handle.uninstrument()
        get_manager().unregister(self.plugin)
        stages.set_level(self.previous_level)
        reset_stats()


@pytest.fixture
def sched_trace_recorder(request: Any) -> Iterator[Any]:
    from sched_trace.testing import MemoryRecorder

    memory = MemoryRecorder()
    with _Traced(request, memory, f"sched_trace_recorder-{id(memory)}"):
        yield memory


class Capture:
    """Events of this test's process and of every process it starts."""

    def __init__(self, directory: Path, writer: Any) -> None:
        self.directory = directory
        self._writer = writer

    @property
    def env(self) -> dict[str, str]:
        from sched_trace.capture import ENV

        return {ENV: str(self.directory)}

    def environ(self, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        """``base`` (default: this process's environment) plus what a child needs to be captured."""
        return {**(os.environ if base is None else base), **self.env}

    def trace(self) -> Any:
        """Everything written so far, by every process, as a Trace."""
        from sched_trace.contracts import Trace

        return Trace.from_capture(self.directory)


@pytest.fixture
def sched_trace_capture(request: Any, tmp_path_factory: Any, monkeypatch: Any) -> Iterator[Capture]:
    from sched_trace.capture import ENV, PLUGIN_NAME, CaptureWriter

    directory = tmp_path_factory.mktemp("sched-trace-capture")
    monkeypatch.setenv(ENV, str(directory))
    writer = CaptureWriter(directory)
    with _Traced(request, writer, PLUGIN_NAME):
        yield Capture(directory, writer)
    writer.close()


class Snapshot:
    """``assert_match(trace)``: the trace's shape against the file recorded beside the test."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.update = bool(request.config.getoption("--sched-trace-snapshot-update"))

    def path(self, name: Optional[str] = None) -> Path:
        from sched_trace.snapshots import snapshot_path

        return snapshot_path(Path(str(self._request.node.path)), self._request.node.name, name)

    def assert_match(self, source: Any, *, name: Optional[str] = None, counts: bool = True) -> None:
        """Compare (or with ``--sched-trace-snapshot-update`` write); ``counts=False`` keeps
        names, nesting, ranks and keys but not how many, for workloads whose step count varies."""
        from sched_trace import snapshots

        __tracebackhide__ = True
        note = snapshots.check(source, self.path(name), update=self.update, test=self._request.node.nodeid,
                               counts=counts)
        if note:
            warnings.warn(note, stacklevel=2)


@pytest.fixture
def sched_trace_snapshot(request: Any) -> Snapshot:
    return Snapshot(request)
