"""pytest fixtures for users' tests (entry point ``pytest11``).

``sched_trace_recorder`` configures sched-trace for one test with an in-memory
recorder and no autoloaded plugins, yields the recorder (``events``,
``stages(name)``, ``by_stage``, ``by_rank(pp_rank=1)``, ``by_microbatch``), and
afterwards removes every instrumentation the test added and restores the level.
Mark a test ``@pytest.mark.sched_trace(level=2)`` to trace at another level.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "sched_trace(level=N): trace level for the sched_trace_recorder fixture")


@pytest.fixture
def sched_trace_recorder(request: Any) -> Iterator[Any]:
    from sched_trace import api, stages
    from sched_trace.instrument import handles
    from sched_trace.plugins import get_manager

    marker = request.node.get_closest_marker("sched_trace")
    level = marker.kwargs.get("level", stages.MAX_LEVEL) if marker else stages.MAX_LEVEL
    before = {id(h) for h in handles()}
    previous_level = stages.get_level()
    from sched_trace.testing import MemoryRecorder

    memory = MemoryRecorder()
    manager = get_manager()
    manager.register(memory, name=f"sched_trace_recorder-{id(memory)}")
    stages.set_level(level)
    try:
        yield memory
    finally:
        for handle in handles():
            if id(handle) not in before:
                handle.uninstrument()
        manager.unregister(memory)
        stages.set_level(previous_level)
        api.reset_stats()
