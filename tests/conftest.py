from __future__ import annotations

import pytest

import sched_trace
from sched_trace import _level_file as level_file, _rank as rank, _stages as stages
from sched_trace._manager import get_manager

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _isolated_sched_trace():
    """Each test starts with no instrumentation and no listening plugins, and leaves none."""
    before = {name for name, _ in get_manager().list_name_plugin()}
    level = stages.get_level()
    yield
    level_file.stop()  # a test that followed a level file leaves no thread changing the next one's level
    sched_trace.uninstrument()
    for name, plugin in get_manager().list_name_plugin():
        if name not in before:
            get_manager().unregister(plugin)
    stages.set_level(level)
    sched_trace.reset_stats()
    rank.clear_thread_info()  # a test that labelled this thread must not label the next one


# The suite leaves the checkout as it found it: no ./sched-trace-out/ or trace file appears
# in it (they are git-ignored, so `git status` alone would not tell).
_CHECKOUT = __import__("pathlib").Path(__file__).resolve().parents[1]
_TRACE_DEBRIS = ("sched-trace-out", "*.perfetto-trace", "*.jsonl", "sched-trace-merged*", "report.png")


def _debris() -> set:
    return {p for pattern in _TRACE_DEBRIS for p in _CHECKOUT.glob(pattern)} | \
        {p for p in _CHECKOUT.glob("examples/**/sched-trace-out")}


def pytest_sessionstart(session):
    session.config._sched_trace_debris_before = _debris()


def pytest_sessionfinish(session, exitstatus):
    new = _debris() - getattr(session.config, "_sched_trace_debris_before", set())
    if new and exitstatus == 0:
        names = ", ".join(sorted(str(p.relative_to(_CHECKOUT)) for p in new))
        session.config.get_terminal_writer().line(
            f"ERROR: the tests wrote into the checkout: {names}; write under tmp_path instead", red=True)
        session.exitstatus = 1


# On CI (CI=true) the tests on real engines run or fail: a backend that did not install
# (.ci/setup-backends goes on past a failed script) must not turn them into skips.
_ENGINE_TESTS = tuple(str(_CHECKOUT / "tests" / name) + "/" for name in ("sglang", "vllm"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and str(item.path).startswith(_ENGINE_TESTS)
            and __import__("os").environ.get("CI", "").lower() == "true"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: the tests on real engines must run, and this one was skipped: {reason}"
