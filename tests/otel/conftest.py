from __future__ import annotations

from typing import Any, Iterator

import pytest

import sched_trace


@pytest.fixture
def traced(tmp_path: Any) -> Iterator[Any]:
    """Configure sched-trace with an OtelPlugin(**settings); shut down and unregister afterwards."""
    from sched_trace_otel import OtelPlugin

    plugins = []

    def start(**settings: Any) -> Any:
        settings.setdefault("directory", str(tmp_path / "otel"))
        plugin = OtelPlugin(**settings)
        sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=0, dp_rank=0)
        sched_trace.configure(level=9, plugins=[plugin], autoload=False)
        plugins.append(plugin)
        return plugin

    yield start
    sched_trace.shutdown(timeout=60)
    for plugin in plugins:
        sched_trace.unregister(plugin)
