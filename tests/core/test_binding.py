"""``obj.method`` of a traced method, the same to its callers as the original's.

``instrument()`` puts the C ``TracedMethod`` in the class (a method descriptor, as a
function is; a plain function in pure Python: ``_instrument.traced_method``), so
``obj.method`` is an ordinary bound method of it. A method decorated in its class body is
a wrapt proxy; with the C hot path ``obj.method`` of it is an ordinary bound method of the
wrapper's ``TracedMethod`` (sched_trace/_binding.c) instead of wrapt's
BoundFunctionWrapper, and the Python form keeps wrapt's binding. Every test runs on both
forms (tests/core/conftest.py).
Ground truth: the undecorated method's own answers (its signature, names, return values,
exceptions), what pickle, copy and weakref give back, and the recorded events.
"""

from __future__ import annotations

import copy
import dis
import gc
import inspect
import pickle
import sys
import weakref
from types import FunctionType, MethodType

import pytest
import wrapt

import sched_trace
from sched_trace import _native


class StepError(KeyError):
    """The scheduler's own error."""


class Engine:
    label = "e0"

    def __init__(self, size=2):
        self.size = size
        self.step_fn = None

    def step(self, batch, mb_id=0, *extra, note=None, **flags):
        """One engine step (the docstring callers see)."""
        if note == "raise":
            raise StepError("the engine's own error")
        return (batch, mb_id, extra, note, flags)

    @classmethod
    def build(cls, size):
        return cls(size)

    @staticmethod
    def plan(mb_id):
        return mb_id * 2


ORIGINAL_STEP = Engine.__dict__["step"]
TARGET = f"{__name__}:Engine.step"


@pytest.fixture
def traced_step(sched_trace_recorder):
    sched_trace.instrument(TARGET, stage="step", microbatch="mb_id", attrs={"label": "self.label",
                                                                             "size": "self.size"})
    return sched_trace_recorder


def binds_in_c(hot_path: str) -> bool:
    """The C form, and wrapt's C wrappers to bind over (not with WRAPT_DISABLE_EXTENSIONS)."""
    from sched_trace._instrument import BINDS_IN_C

    return hot_path == "c" and BINDS_IN_C


def test_an_instrumented_method_is_a_method_descriptor_in_the_class(traced_step, hot_path):
    """instrument() puts in the class what the interpreter treats as a function: the C
    TracedMethod (a method descriptor) with the C hot path, a plain function without.
    Either answers isinstance(FunctionType) and unwraps to the original."""
    patched = vars(Engine)["step"]
    if hot_path == "c":
        assert type(patched) is _native.speedups.TracedMethod
    else:
        assert type(patched) is FunctionType
    assert isinstance(patched, FunctionType) and inspect.isfunction(patched) and patched is not ORIGINAL_STEP
    assert patched.__wrapped__ is ORIGINAL_STEP and inspect.unwrap(patched) is ORIGINAL_STEP
    assert Engine.step is patched  # through the class: itself, as a function is
    bound = Engine().step
    assert type(bound) is MethodType and bound.__func__ is patched


def _specialized(function) -> bool:
    """Whether the interpreter has specialized the instruction that loads ``engine.step``
    in ``function`` (3.11: LOAD_METHOD_WITH_VALUES and kin, where an unspecialized one
    reads LOAD_METHOD_ADAPTIVE; 3.12 and later: LOAD_ATTR_METHOD_*)."""
    (load,) = [i for i in dis.get_instructions(function, adaptive=True) if i.argval == "step"]
    return load.opname not in ("LOAD_METHOD", "LOAD_ATTR", "LOAD_METHOD_ADAPTIVE", "LOAD_ATTR_ADAPTIVE")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the specializing interpreter is 3.11's")
def test_the_interpreter_specializes_self_method_on_it_as_on_a_function(traced_step, hot_path):
    """The reason it is a TracedMethod: ``engine.step()`` loads it with a specialized
    instruction (no bound method made), as for the original; on a wrapt proxy it cannot,
    nor (on 3.11) on a Python function taking ``*args``, the pure-Python form."""
    if hot_path != "c":
        pytest.skip("the pure-Python form takes *args, which 3.11 does not specialize self.method() on")

    def calls(engine):
        return engine.step("b")

    engine = Engine()
    for _ in range(64):
        calls(engine)
    assert _specialized(calls)
    assert len(traced_step.stages("step")) == 64

    class Owned:  # the control: a decorated method stays a proxy, which it cannot specialize
        @sched_trace.stage("owned")
        def step(self, batch):
            return batch

    def calls_proxy(owned):
        return owned.step("b")

    owned = Owned()
    for _ in range(64):
        calls_proxy(owned)
    assert not _specialized(calls_proxy)


def test_a_decorated_method_binds_in_c_and_python_binds_with_wrapt(sched_trace_recorder, hot_path):
    """@sched_trace.stage on a method (a wrapt proxy, since the decorator cannot tell a
    method from a function): in C a plain bound method of its TracedMethod."""

    class Owned:
        @sched_trace.stage("owned")
        def step(self, mb_id):
            return mb_id

    bound = Owned().step
    if binds_in_c(hot_path):
        assert type(bound) is MethodType
        assert type(bound.__func__) is _native.speedups.TracedMethod
    else:
        assert isinstance(bound, wrapt.BoundFunctionWrapper)
    assert bound(3) == 3 and len(sched_trace_recorder.stages("owned")) == 1


def test_a_bound_traced_method_answers_as_the_original(traced_step):
    engine = Engine()
    bound, plain = engine.step, MethodType(ORIGINAL_STEP, engine)
    assert (bound.__name__, bound.__qualname__, bound.__doc__, bound.__module__) == (
        plain.__name__, plain.__qualname__, plain.__doc__, plain.__module__)
    assert inspect.signature(bound) == inspect.signature(plain)
    assert bound.__self__ is engine
    assert bound == engine.step and hash(bound) == hash(engine.step)
    assert inspect.unwrap(bound.__func__) is ORIGINAL_STEP


def test_the_class_attribute_pickles_copies_and_reads_as_the_original(traced_step, hot_path):
    patched = vars(Engine)["step"]
    assert pickle.loads(pickle.dumps(Engine.step)) is patched  # by reference, as a function
    assert copy.copy(patched) is patched and copy.deepcopy(patched) is patched
    assert inspect.signature(Engine.step) == inspect.signature(ORIGINAL_STEP)
    if hot_path == "c":  # it reads the original's code; the pure-Python function has its own
        assert inspect.getfullargspec(Engine.step) == inspect.getfullargspec(ORIGINAL_STEP)
        assert Engine.step.__code__ is ORIGINAL_STEP.__code__
        Engine.step.marked = True  # set on, read from and deleted from the original, as a proxy forwards
        assert ORIGINAL_STEP.marked is True and Engine().step.marked is True
        del Engine.step.marked
        assert not hasattr(ORIGINAL_STEP, "marked")


def test_every_way_of_calling_it_returns_what_the_original_returns_and_is_traced(traced_step):
    engine = Engine(size=3)
    calls = [((), {"batch": "b"}), (("b", 4), {}), (("b", 5, "x", "y"), {"note": "n", "k": 1}),
             (("b",), {"mb_id": 6})]
    for args, kwargs in calls:
        assert engine.step(*args, **kwargs) == ORIGINAL_STEP(engine, *args, **kwargs)
    assert Engine.step(engine, "b", 7) == ORIGINAL_STEP(engine, "b", 7)  # through the class
    steps = traced_step.stages("step")
    assert [event.microbatch for event in steps] == [0, 4, 5, 6, 7]
    assert [dict(event.attrs) for event in steps] == [{"label": "e0", "size": 3}] * 5


def test_with_the_gate_shut_every_way_of_calling_it_returns_what_the_original_returns(traced_step):
    """Below the stage's level the method calls the original with the caller's own
    arguments (in C straight from the call's vector) and records nothing."""
    engine = Engine(size=3)
    sched_trace.set_level(0)  # the step's stage is level 2, the default
    calls = [((), {"batch": "b"}), (("b", 4), {}), (("b", 5, "x", "y"), {"note": "n", "k": 1})]
    for args, kwargs in calls:
        assert engine.step(*args, **kwargs) == ORIGINAL_STEP(engine, *args, **kwargs)
    assert Engine.step(engine, "b", 7) == ORIGINAL_STEP(engine, "b", 7)
    with pytest.raises(StepError, match="own error"):
        engine.step("b", 1, note="raise")
    with pytest.raises(TypeError, match="batch"):
        engine.step()
    assert traced_step.stages("step") == []
    sched_trace.set_level(2)
    assert engine.step("b", 8)[1] == 8
    assert [event.microbatch for event in traced_step.stages("step")] == [8]


def test_keep_if_and_request_probes_on_a_method_see_its_arguments(sched_trace_recorder):
    """The other two probes in the class: a keep_if stage (its condition reads an argument)
    and a request phase (its request id read from an argument, by keyword too)."""
    sched_trace.instrument(f"{__name__}:Engine.step", stage="kept", microbatch="mb_id",
                           keep_if="mb_id != 0")
    engine = Engine()
    assert engine.step("b", 0) == ORIGINAL_STEP(engine, "b", 0)  # idle: dropped
    assert engine.step("b", mb_id=3, note="n") == ORIGINAL_STEP(engine, "b", mb_id=3, note="n")
    assert [event.microbatch for event in sched_trace_recorder.stages("kept")] == [3]
    sched_trace.uninstrument(f"{__name__}:Engine.step")
    sched_trace.instrument(f"{__name__}:Engine.step", kind="request", phase="arrived", request_id="batch")
    assert engine.step("r1", 1) == ORIGINAL_STEP(engine, "r1", 1)
    assert engine.step(batch="r2") == ORIGINAL_STEP(engine, batch="r2")
    phases = [(event.request_id, event.phase) for event in sched_trace_recorder.requests()]
    assert phases == [("r1", "arrived"), ("r2", "arrived")]


def test_the_original_error_reaches_the_caller_and_the_span(traced_step):
    engine = Engine()
    with pytest.raises(StepError, match="own error") as raised:
        engine.step("b", 1, note="raise")
    (event,) = traced_step.stages("step")
    assert event.error is raised.value
    assert raised.traceback[-1].name == "step"  # raised in the original's own frame


def test_a_missing_argument_is_the_original_type_error(traced_step):
    with pytest.raises(TypeError, match="batch"):
        Engine().step()


def test_pickle_and_copy_keep_the_traced_call(traced_step):
    engine = Engine(size=5)
    again = pickle.loads(pickle.dumps(engine.step))
    assert again("b", 1) == ORIGINAL_STEP(again.__self__, "b", 1)
    engine.step_fn = engine.step  # a pre-bound step, as vLLM keeps one
    copied = copy.deepcopy(engine)
    assert copied.step_fn.__self__ is copied and copied.step_fn("b", 2)[1] == 2
    assert [event.microbatch for event in traced_step.stages("step")] == [1, 2]


def test_a_weak_method_calls_the_traced_method(traced_step):
    engine = Engine()
    weak = weakref.WeakMethod(engine.step)
    assert weak()("b", 3)[1] == 3
    assert [event.microbatch for event in traced_step.stages("step")] == [3]
    del engine
    gc.collect()
    assert weak() is None  # it kept no strong reference


def test_uninstrument_gives_back_the_original_binding(traced_step):
    engine = Engine()
    engine.step("b", 1)
    sched_trace.uninstrument(TARGET)
    assert engine.step.__func__ is ORIGINAL_STEP and type(engine.step.__func__) is FunctionType
    engine.step("b", 2)
    assert [event.microbatch for event in traced_step.stages("step")] == [1]


def test_classmethods_and_staticmethods_keep_wrapt_binding_and_are_traced(sched_trace_recorder):
    sched_trace.instrument(f"{__name__}:Engine.build", stage="build", batch_size="size")
    sched_trace.instrument(f"{__name__}:Engine.plan", stage="plan", microbatch="mb_id")
    assert isinstance(vars(Engine)["build"], wrapt.FunctionWrapper)
    assert isinstance(vars(Engine)["plan"], wrapt.FunctionWrapper)
    engine = Engine()
    assert isinstance(engine.build(4), Engine) and Engine.build(6).size == 6
    assert engine.plan(3) == 6 and Engine.plan(4) == 8
    assert [event.batch_size for event in sched_trace_recorder.stages("build")] == [4, 6]
    assert [event.microbatch for event in sched_trace_recorder.stages("plan")] == [3, 4]


def test_a_wrapt_wrapper_stacked_on_top_still_calls_the_traced_method(traced_step):
    seen = []

    @wrapt.decorator
    def outer(wrapped, instance, args, kwargs):
        seen.append(instance)
        return wrapped(*args, **kwargs)

    Engine.step = outer(Engine.__dict__["step"])
    engine = Engine()
    assert engine.step("b", 9)[1] == 9
    assert seen == [engine]
    assert [event.microbatch for event in traced_step.stages("step")] == [9]
    sched_trace.uninstrument(TARGET)  # unlinks ours, keeps theirs
    assert engine.step("b", 10)[1] == 10 and seen == [engine, engine]
    assert [event.microbatch for event in traced_step.stages("step")] == [9]
    Engine.step = ORIGINAL_STEP


class Streams:
    async def fetch(self, mb_id):
        return mb_id

    def chunks(self, mb_id):
        yield mb_id


def test_coroutine_and_generator_methods_stay_wrapt_proxies_that_callers_recognise(sched_trace_recorder):
    """Callers tell a coroutine function by its code's flags (inspect, asyncio): a plain
    function in their place would hide them, wrapt's proxy forwards them."""
    import asyncio

    plain = (inspect.iscoroutinefunction(Streams.fetch), inspect.isgeneratorfunction(Streams.chunks))
    sched_trace.instrument(f"{__name__}:Streams.fetch", stage="fetch")
    sched_trace.instrument(f"{__name__}:Streams.chunks", stage="chunks")
    assert isinstance(vars(Streams)["fetch"], wrapt.FunctionWrapper)
    assert isinstance(vars(Streams)["chunks"], wrapt.FunctionWrapper)
    assert (inspect.iscoroutinefunction(Streams.fetch), inspect.isgeneratorfunction(Streams.chunks)) == plain
    assert asyncio.run(Streams().fetch(2)) == 2 and list(Streams().chunks(3)) == [3]
    assert len(sched_trace_recorder.stages("fetch")) == 1 and len(sched_trace_recorder.stages("chunks")) == 1


def test_an_inherited_method_is_patched_on_the_subclass_and_undone_by_deleting_it(sched_trace_recorder):
    class Base:
        def step(self, mb_id):
            return mb_id

    class Derived(Base):
        pass

    module = sys.modules[__name__]
    module.Derived = Derived
    try:
        handle = sched_trace.instrument(f"{__name__}:Derived.step", stage="derived")
        assert isinstance(vars(Derived)["step"], FunctionType) and vars(Derived)["step"].__wrapped__ is vars(Base)["step"]
        assert Derived().step(4) == 4 and Base().step(5) == 5
        assert [event.microbatch for event in sched_trace_recorder.stages("derived")] == [None]
        handle.uninstrument()
        assert "step" not in vars(Derived) and Derived.step is Base.step
    finally:
        del module.Derived
