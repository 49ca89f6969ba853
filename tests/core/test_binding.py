"""``obj.method`` of a traced method: bound in C, or by wrapt, the same to its callers.

With the C hot path, ``obj.method`` is an ordinary bound method of the wrapper's
``TracedMethod`` (sched_trace/_binding.c) instead of wrapt's BoundFunctionWrapper; the
Python form keeps wrapt's binding. Every test runs on both forms (tests/core/conftest.py).
Ground truth: the undecorated method's own answers (its signature, names, return values,
exceptions), what pickle, copy and weakref give back, and the recorded events.
"""

from __future__ import annotations

import copy
import gc
import inspect
import pickle
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


def test_the_c_form_binds_a_plain_bound_method_and_python_binds_with_wrapt(traced_step, hot_path):
    bound = Engine().step
    if binds_in_c(hot_path):
        assert type(bound) is MethodType
        assert type(bound.__func__) is _native.speedups.TracedMethod
        assert bound.__func__.__wrapped__ is ORIGINAL_STEP
    else:
        assert isinstance(bound, wrapt.BoundFunctionWrapper)


def test_a_bound_traced_method_answers_as_the_original(traced_step):
    engine = Engine()
    bound, plain = engine.step, MethodType(ORIGINAL_STEP, engine)
    assert (bound.__name__, bound.__qualname__, bound.__doc__, bound.__module__) == (
        plain.__name__, plain.__qualname__, plain.__doc__, plain.__module__)
    assert inspect.signature(bound) == inspect.signature(plain)
    assert bound.__self__ is engine
    assert bound == engine.step and hash(bound) == hash(engine.step)
    assert bound.__code__ is ORIGINAL_STEP.__code__


def test_every_way_of_calling_it_returns_what_the_original_returns_and_is_traced(traced_step):
    engine = Engine(size=3)
    calls = [((), {"batch": "b"}), (("b", 4), {}), (("b", 5, "x", "y"), {"note": "n", "k": 1}),
             (("b",), {"mb_id": 6})]
    for args, kwargs in calls:
        assert engine.step(*args, **kwargs) == ORIGINAL_STEP(engine, *args, **kwargs)
    assert Engine.step(engine, "b", 7) == ORIGINAL_STEP(engine, "b", 7)  # through the class: wrapt binds
    steps = traced_step.stages("step")
    assert [event.microbatch for event in steps] == [0, 4, 5, 6, 7]
    assert [dict(event.attrs) for event in steps] == [{"label": "e0", "size": 3}] * 5


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


def test_a_weak_method_calls_the_traced_method_in_c(traced_step, hot_path):
    if not binds_in_c(hot_path):
        pytest.skip("wrapt's BoundFunctionWrapper cannot be rebuilt by WeakMethod (type(meth)(func, obj))")
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
