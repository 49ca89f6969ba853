"""instrument()/uninstrument() on every kind of target: one event per call, exact undo."""

from __future__ import annotations

import asyncio
import pickle
import sys
import textwrap

import pytest
import wrapt

import sched_trace
from tests.core import sample_scheduler as sample
from tests.core.sample_scheduler import Batch, Scheduler


def call_target(kind: str):
    s = Scheduler()
    batch = Batch(["r1", "r2", "r3"])
    if kind == "method":
        return s.run_batch(batch, 7)
    if kind == "classmethod":
        return Scheduler.make(5)
    if kind == "staticmethod":
        return Scheduler.merge(1, 2)
    if kind == "function":
        return sample.schedule([1, 2, 3])
    if kind == "async":
        return asyncio.run(s.run_async(batch, 7))
    if kind == "generator":
        return list(s.stream(batch))
    if kind == "asyncgen":
        async def consume():
            return [r async for r in s.astream(batch)]
        return asyncio.run(consume())
    raise AssertionError(kind)


TARGETS = {
    "method": "tests.core.sample_scheduler:Scheduler.run_batch",
    "classmethod": "tests.core.sample_scheduler:Scheduler.make",
    "staticmethod": "tests.core.sample_scheduler:Scheduler.merge",
    "function": "tests.core.sample_scheduler:schedule",
    "async": "tests.core.sample_scheduler:Scheduler.run_async",
    "generator": "tests.core.sample_scheduler:Scheduler.stream",
    "asyncgen": "tests.core.sample_scheduler:Scheduler.astream",
}
EXPECTED = {
    "method": 3, "classmethod": None, "staticmethod": 3, "function": [1, 2, 3],
    "async": 3, "generator": ["r1", "r2", "r3"], "asyncgen": ["r1", "r2", "r3"],
}


def raw_attribute(target: str):
    module, path = target.split(":")
    owner = sys.modules[module]
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return vars(owner)[name]


@pytest.mark.parametrize("kind", list(TARGETS))
def test_one_event_per_call_none_after_uninstrument_one_after_reinstrument(kind, sched_trace_recorder):
    target = TARGETS[kind]
    original = raw_attribute(target)

    handle = sched_trace.instrument(target, stage=f"stage_{kind}", level=2)
    result = call_target(kind)
    if EXPECTED[kind] is not None:
        assert result == EXPECTED[kind]
    assert [e.name for e in sched_trace_recorder.events] == [f"stage_{kind}"]

    handle.uninstrument()
    assert raw_attribute(target) is original
    call_target(kind)
    assert len(sched_trace_recorder.events) == 1

    sched_trace.instrument(target, stage=f"stage_{kind}", level=2)
    call_target(kind)
    assert len(sched_trace_recorder.events) == 2
    sched_trace.uninstrument(target)
    assert raw_attribute(target) is original


def test_extractors_give_microbatch_batch_size_and_rank_keys(sched_trace_recorder):
    sched_trace.instrument(
        "tests.core.sample_scheduler:Scheduler.run_batch",
        stage="run_batch_cpu", level=4,
        microbatch="mb_id", batch_size="len(batch.reqs)",
        rank={"pp_rank": "self.pp_rank"}, attrs={"forward_mode": "batch.forward_mode"},
        requests="batch.reqs",
    )
    Scheduler().run_batch(Batch(["a", "b"], "extend"), mb_id=3)
    Scheduler().run_batch(Batch(["c"]))  # mb_id from the default
    first, second = sched_trace_recorder.stages("run_batch_cpu")
    assert (first.microbatch, first.batch_size, first.rank.pp_rank) == (3, 2, 1)
    assert first.attrs == {"forward_mode": "extend", "requests": ["a", "b"]}
    assert (second.microbatch, second.batch_size) == (0, 1)
    assert first.level == 4 and first.end_ns >= first.start_ns


def test_method_called_through_the_class_reads_the_same_arguments(sched_trace_recorder):
    sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", microbatch="mb_id",
                           batch_size="len(batch.reqs)")
    Scheduler.run_batch(Scheduler(), Batch([1, 2, 3, 4]), 9)
    (event,) = sched_trace_recorder.events
    assert (event.microbatch, event.batch_size) == (9, 4)


def test_unreadable_value_is_missing_not_an_exception(sched_trace_recorder):
    sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", batch_size="len(batch.tokens)")
    assert Scheduler().run_batch(Batch([1])) == 1
    (event,) = sched_trace_recorder.events
    assert event.batch_size is None
    assert sched_trace.stats()["extract_missing"] == {"batch_size='len(batch.tokens)'": 1}


def test_scheduler_exception_propagates_unchanged_and_is_recorded(sched_trace_recorder):
    sched_trace.instrument("tests.core.sample_scheduler:Scheduler.failing_batch", stage="bad")
    with pytest.raises(RuntimeError, match="scheduler bug") as raised:
        Scheduler().failing_batch(Batch([]))
    (event,) = sched_trace_recorder.events
    assert event.error is raised.value


def test_inherited_method_is_patched_on_the_subclass_only(sched_trace_recorder):
    handle = sched_trace.instrument("tests.core.sample_scheduler:TPScheduler.run_batch", stage="tp_run")
    sample.TPScheduler().run_batch(Batch([1]))
    Scheduler().run_batch(Batch([1]))
    assert sched_trace_recorder.names() == ["tp_run"]
    handle.uninstrument()
    assert "run_batch" not in vars(sample.TPScheduler)
    assert sample.TPScheduler.run_batch is Scheduler.run_batch


def test_instrument_is_idempotent_and_rejects_conflicting_options(sched_trace_recorder):
    first = sched_trace.instrument("tests.core.sample_scheduler:schedule", stage="schedule")
    again = sched_trace.instrument("tests.core.sample_scheduler:schedule", stage="schedule")
    assert again is first
    sample.schedule([1])
    assert len(sched_trace_recorder.events) == 1  # not wrapped twice
    with pytest.raises(sched_trace.InstrumentationError, match="already instrumented"):
        sched_trace.instrument("tests.core.sample_scheduler:schedule", stage="other")


def test_another_wrapt_wrapper_below_is_kept(sched_trace_recorder):
    calls = []

    def theirs(wrapped, instance, args, kwargs):
        calls.append("theirs")
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(sample, "schedule", theirs)
    below = vars(sample)["schedule"]
    try:
        sched_trace.instrument("tests.core.sample_scheduler:schedule")
        sample.schedule([1])
        assert calls == ["theirs"] and len(sched_trace_recorder.events) == 1
        sched_trace.uninstrument()
        assert vars(sample)["schedule"] is below
    finally:
        sample.schedule = below.__wrapped__


def test_another_wrapt_wrapper_on_top_survives_our_uninstrument(sched_trace_recorder):
    original = vars(sample)["schedule"]
    sched_trace.instrument("tests.core.sample_scheduler:schedule")
    calls = []

    def theirs(wrapped, instance, args, kwargs):
        calls.append("theirs")
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(sample, "schedule", theirs)
    top = vars(sample)["schedule"]
    try:
        sched_trace.uninstrument()
        assert vars(sample)["schedule"] is top
        assert top.__wrapped__ is original
        assert sample.schedule([1, 2]) == [1, 2]
        assert calls == ["theirs"] and sched_trace_recorder.events == []
    finally:
        sample.schedule = original


def test_module_imported_after_instrument_is_patched_on_import(tmp_path, monkeypatch, sched_trace_recorder):
    (tmp_path / "late_engine.py").write_text(textwrap.dedent("""
        class Engine:
            def run_batch(self, batch, mb):
                return batch
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    handle = sched_trace.instrument("late_engine:Engine.run_batch", stage="late", microbatch="mb")
    assert handle.state == "pending"
    import late_engine

    try:
        assert late_engine.Engine().run_batch([1], mb=4) == [1]
        assert [(e.name, e.microbatch) for e in sched_trace_recorder.events] == [("late", 4)]
    finally:
        sched_trace.uninstrument()
        sys.modules.pop("late_engine", None)


def test_missing_target_fails_at_declaration_with_a_hint():
    with pytest.raises(sched_trace.InstrumentationError, match=r"has no attribute 'run_bach'.*run_batch"):
        sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_bach")
    with pytest.raises(sched_trace.InstrumentationError, match="no module named 'no_such_engine'"):
        sched_trace.instrument("no_such_engine.scheduler:Scheduler.run_batch")
    with pytest.raises(sched_trace.InstrumentationError, match="package.module:Class.method"):
        sched_trace.instrument("tests.core.sample_scheduler.Scheduler.run_batch")


def test_bad_extractor_fails_at_declaration_naming_it():
    with pytest.raises(sched_trace.ExtractorError, match=r"microbatch='mb'.*Did you mean 'mb_id'"):
        sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", microbatch="mb")
    with pytest.raises(sched_trace.ExtractorError, match=r"batch_size='len\(batch.reqs' is malformed"):
        sched_trace.instrument("tests.core.sample_scheduler:Scheduler.run_batch", batch_size="len(batch.reqs")
    assert sched_trace.instrument.__module__  # nothing was left half-patched
    assert not isinstance(vars(Scheduler)["run_batch"], wrapt.FunctionWrapper)


def test_decorated_functions_pickle_by_reference():
    from tests.core import owned

    assert pickle.loads(pickle.dumps(owned.prefill)) is owned.prefill
    worker = owned.Worker()
    bound = pickle.loads(pickle.dumps(worker.decode))
    assert bound(2) == 4


def test_instrumented_method_survives_spawn(tmp_path):
    import multiprocessing

    handle = sched_trace.instrument("tests.core.sample_scheduler:schedule")
    try:
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            assert pool.apply(sample.schedule, ([5, 6, 7], 2)) == [5, 6]
    finally:
        handle.uninstrument()
