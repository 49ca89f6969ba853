"""The pytest plugin, as a user's test suite sees it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fixture_gives_events_with_filters_and_cleans_up(pytester):
    pytester.makepyfile(test_user="""
        import sched_trace
        from tests.core import sample_scheduler
        from tests.core.sample_scheduler import Batch, Scheduler

        def test_traced(sched_trace_recorder):
            sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch",
                                   microbatch="mb_id", rank={"pp_rank": "self.pp_rank"})
            Scheduler().run_batch(Batch([1]), 0)
            Scheduler().run_batch(Batch([1]), 1)
            assert len(sched_trace_recorder.by_stage("run_batch")) == 2
            assert len(sched_trace_recorder.by_rank(pp_rank=1)) == 2
            assert len(sched_trace_recorder.by_rank(pp_rank=0)) == 0
            assert [e.microbatch for e in sched_trace_recorder.by_microbatch(1)] == [1]

        def test_cleaned_up():
            import wrapt
            assert not isinstance(vars(Scheduler)["run_batch"], wrapt.FunctionWrapper)
            assert sched_trace.stats()["plugin_errors"] == {}
    """)
    pytester.syspathinsert(REPO)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_snippet_in_the_plugin_guide_passes_as_a_test_module(pytester):
    text = (REPO / "docs" / "plugins.md").read_text()
    block = re.search(r"```python\n(# not-run: a pytest test module.*?)```", text, re.S).group(1)
    pytester.makepyfile(test_from_docs=block)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_marker_sets_the_level(pytester):
    pytester.makepyfile(test_level="""
        import pytest, sched_trace

        @sched_trace.stage("deep", level=5)
        def deep():
            pass

        @pytest.mark.sched_trace(level=4)
        def test_above_level(sched_trace_recorder):
            deep()
            assert sched_trace_recorder.events == []
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
