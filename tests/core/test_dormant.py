"""A target of level 2 or more above the configured level waits unpatched (dormant) until the level reaches it.

What it saves: a patched target above the level costs the scheduler a call through its
wrapper at every call; a dormant one costs nothing. What it keeps: the declaration is
checked at once, the level raised at run time patches it, undo stays exact.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

import sched_trace
from tests.core import sample_scheduler as sample
from tests.core.sample_scheduler import Batch, Scheduler, TPScheduler

RUN_BATCH = vars(Scheduler)["run_batch"]


@pytest.mark.sched_trace(level=1)
def test_a_target_above_the_level_is_checked_but_not_patched(sched_trace_recorder) -> None:
    handle = sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", stage="run_batch",
                                    level=2, microbatch="mb_id")
    assert handle.state == "dormant" and not handle.active
    assert sched_trace.stats()["dormant_targets"] == ["tests.core.sample_scheduler:Scheduler.run_batch"]
    assert vars(Scheduler)["run_batch"] is RUN_BATCH  # the scheduler calls its own function
    assert Scheduler().run_batch(Batch(["a"]), 3) == 1
    assert sched_trace_recorder.events == []
    # A mistake fails when it is declared, dormant or not.
    with pytest.raises(sched_trace.InstrumentationError, match="run_bach"):
        sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_bach", level=5)
    with pytest.raises(sched_trace.ExtractorError, match="no_such"):
        sched_trace.instrument("tests.core.sample_scheduler:Scheduler.failing_batch", level=5,
                               microbatch="no_such")


@pytest.mark.sched_trace(level=1)
def test_raising_the_level_patches_it_and_lowering_leaves_it(sched_trace_recorder) -> None:
    handle = sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", stage="run_batch",
                                    level=2, microbatch="mb_id")
    sched_trace.set_level(2)
    assert handle.state == "active" and vars(Scheduler)["run_batch"] is handle.proxy
    assert sched_trace.stats()["dormant_targets"] == []
    assert Scheduler().run_batch(Batch(["a", "b"]), 3) == 2
    assert [(e.name, e.microbatch) for e in sched_trace_recorder.events] == [("run_batch", 3)]
    sched_trace.set_level(1)  # above the level again: patched still, one comparison a call
    assert vars(Scheduler)["run_batch"] is handle.proxy
    Scheduler().run_batch(Batch(["a"]), 4)
    assert len(sched_trace_recorder.events) == 1
    sched_trace.uninstrument()
    assert vars(Scheduler)["run_batch"] is RUN_BATCH


@pytest.mark.sched_trace(level=1)
def test_undo_of_a_dormant_target_leaves_the_original_and_the_level_no_longer_patches_it() -> None:
    handle = sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", level=3)
    handle.uninstrument()
    assert handle.state == "removed"
    sched_trace.set_level(9)
    assert vars(Scheduler)["run_batch"] is RUN_BATCH
    assert sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", level=3).state == "active"


@pytest.mark.sched_trace(level=1)
def test_an_inherited_method_is_patched_on_the_subclass_only_when_woken(sched_trace_recorder) -> None:
    handle = sched_trace.instrument("tests.core.sample_scheduler:TPScheduler.run_batch", stage="tp", level=2)
    assert "run_batch" not in vars(TPScheduler)
    sched_trace.set_level(2)
    assert vars(TPScheduler)["run_batch"] is handle.proxy and vars(Scheduler)["run_batch"] is RUN_BATCH
    TPScheduler().run_batch(Batch(["a"]))
    Scheduler().run_batch(Batch(["a"]))
    assert sched_trace_recorder.names() == ["tp"]
    handle.uninstrument()
    assert "run_batch" not in vars(TPScheduler)


@pytest.mark.sched_trace(level=1)
def test_a_target_replaced_while_dormant_is_resolved_again(sched_trace_recorder) -> None:
    handle = sched_trace.instrument("tests.core.sample_scheduler:schedule", stage="schedule", level=2)
    original = sample.schedule

    def replacement(queue, budget=8):  # another library patched the function meanwhile
        return list(reversed(queue))[:budget]

    sample.schedule = replacement
    try:
        sched_trace.set_level(2)
        assert sample.schedule is handle.proxy and handle.original is replacement
        assert sample.schedule([1, 2, 3]) == [3, 2, 1]
        assert sched_trace_recorder.names() == ["schedule"]
        handle.uninstrument()
        assert sample.schedule is replacement
    finally:
        sample.schedule = original


@pytest.mark.sched_trace(level=1)
def test_a_module_imported_later_is_resolved_on_import_and_waits_for_its_level(
        tmp_path, monkeypatch, sched_trace_recorder) -> None:
    (tmp_path / "dormant_engine.py").write_text(textwrap.dedent("""
        class Engine:
            def run_batch(self, batch, mb):
                return batch
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    handle = sched_trace.instrument("dormant_engine:Engine.run_batch", stage="late", level=3, microbatch="mb")
    assert handle.state == "pending"
    import dormant_engine

    try:
        original = vars(dormant_engine.Engine)["run_batch"]
        assert handle.state == "dormant"
        sched_trace.set_level(3)
        assert vars(dormant_engine.Engine)["run_batch"] is handle.proxy
        assert dormant_engine.Engine().run_batch([1], mb=4) == [1]
        assert [(e.name, e.microbatch) for e in sched_trace_recorder.events] == [("late", 4)]
        handle.uninstrument()
        assert vars(dormant_engine.Engine)["run_batch"] is original
    finally:
        sys.modules.pop("dormant_engine", None)


def test_a_profile_at_level_1_leaves_its_finer_targets_unpatched_until_configured_higher(tmp_path) -> None:
    config = {"autoload": False, "instrument": [
        {"target": "tests.core.sample_scheduler:Scheduler.run_batch", "kind": "batch", "stage": "step", "level": 1},
        {"target": "tests.core.sample_scheduler:schedule", "stage": "schedule", "level": 3}]}
    original = sample.schedule
    sched_trace.configure(level=1, config=config)
    assert vars(Scheduler)["run_batch"] is not RUN_BATCH and sample.schedule is original
    sched_trace.configure(level=4, config=config)
    assert sample.schedule is not original and sample.schedule([1, 2]) == [1, 2]


@pytest.mark.sched_trace(level=0)
def test_steps_and_request_phases_are_patched_at_level_0_so_turning_tracing_on_reaches_kept_references(
        sched_trace_recorder) -> None:
    step = sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", stage="step", kind="batch",
                                  level=1)
    fine = sched_trace.instrument("tests.core.sample_scheduler:schedule", stage="schedule", level=2)
    assert step.state == "active" and fine.state == "dormant"
    kept = Scheduler().run_batch  # a scheduler's own reference, taken while tracing is off
    kept(Batch(["a"]))
    assert sched_trace_recorder.events == []
    sched_trace.set_level(1)
    kept(Batch(["a"]))
    assert sched_trace_recorder.names() == ["step"] and fine.state == "dormant"
