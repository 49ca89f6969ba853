from __future__ import annotations

import pytest

import sched_trace
from sched_trace import rank, stages
from sched_trace.plugins import get_manager

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _isolated_sched_trace():
    """Each test starts with no instrumentation and no listening plugins, and leaves none."""
    before = {name for name, _ in get_manager().list_name_plugin()}
    level = stages.get_level()
    yield
    sched_trace.uninstrument()
    for name, plugin in get_manager().list_name_plugin():
        if name not in before:
            get_manager().unregister(plugin)
    stages.set_level(level)
    sched_trace.reset_stats()
    rank.clear_thread_info()  # a test that labelled this thread must not label the next one
