"""Levels: a stage above the level records nothing; the level changes at run time."""

from __future__ import annotations

import pytest

import sched_trace
from sched_trace import _stages as stages


@sched_trace.stage("coarse", level=1)
def coarse():
    return fine()


@sched_trace.stage("fine", level=4)
def fine():
    return "done"


@pytest.mark.sched_trace(level=2)
def test_stage_above_the_level_is_not_recorded(sched_trace_recorder):
    assert coarse() == "done"
    assert sched_trace_recorder.names() == ["coarse"]


def test_level_changes_at_run_time(sched_trace_recorder):
    sched_trace.set_level(4)
    coarse()
    sched_trace.set_level(0)
    coarse()
    sched_trace.set_level(1)
    coarse()
    assert sched_trace_recorder.names() == ["fine", "coarse", "coarse"]


def test_nested_stages_know_their_parent(sched_trace_recorder):
    coarse()
    inner, outer = sched_trace_recorder.events
    assert inner.parent_id == outer.span_id and outer.parent_id == 0


def test_batch_id_is_inherited_by_stages_in_the_batch(sched_trace_recorder):
    from tests.core.owned import Worker

    Worker().step(2)
    Worker().step(1)
    decodes = sched_trace_recorder.stages("decode")
    steps = sched_trace_recorder.batches("decode_step")
    assert [d.batch_id for d in decodes] == [steps[0].batch_id] * 2 + [steps[1].batch_id]
    assert steps[0].batch_id != steps[1].batch_id
    assert [s.batch_size for s in steps] == [2, 1]
    assert all(d.rank.pp_rank == 0 for d in decodes)


def test_each_declaration_keeps_its_own_level(sched_trace_recorder):
    sched_trace.set_level(2)
    again = sched_trace.stage("fine", level=2)(lambda: None)
    again()
    fine()  # the level-4 declaration of the same name stays above the level
    assert sched_trace_recorder.names() == ["fine"]
    assert sched_trace_recorder.events[0].level == 2


def test_levels_are_validated():
    with pytest.raises(ValueError, match="level must be an integer from 0"):
        sched_trace.set_level(11)
    with pytest.raises(ValueError, match="level of stage 'x'"):
        sched_trace.stage("x", level=-1)(lambda: None)
    assert stages.get_stage("coarse").level == 1
