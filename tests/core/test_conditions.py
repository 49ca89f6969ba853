"""The condition grammar of when=, keep_if= and "EXPR if CONDITION" attributes.

Ground truth: Python itself. Each condition is also a Python expression; it must hold
exactly when Python evaluates it to true on the same objects (a value that cannot be
read, or compared, makes it false; a bare None is unknown, so neither it nor its
``not`` holds).
"""

from __future__ import annotations

import types

import pytest

import sched_trace
from sched_trace import ExtractorError
from sched_trace._conditions import parse_attributes, parse_condition
from sched_trace._extract import Parameters


def run_batch(self, batch, mb_id=0):
    return batch


PARAMS = Parameters(run_batch)
MODE = types.SimpleNamespace
BATCHES = [
    MODE(reqs=[1, 2], forward_mode=MODE(name="EXTEND"), extend_num_tokens=7, note=None),
    MODE(reqs=[], forward_mode=MODE(name="DECODE"), extend_num_tokens=7, note="x"),
    MODE(reqs=[3], forward_mode=MODE(name="MIXED"), extend_num_tokens=0, note=""),
]
CONDITIONS = [
    "len(batch.reqs) > 0", "len(batch.reqs) >= 2", "len(batch.reqs) < 1", "len(batch.reqs) <= 0",
    "batch.forward_mode.name == 'EXTEND'", "batch.forward_mode.name != \"DECODE\"",
    "batch.forward_mode.name in ('EXTEND', 'MIXED')", "batch.forward_mode.name not in ('EXTEND',)",
    "not batch.forward_mode.name in ('EXTEND', 'MIXED')", "batch.extend_num_tokens", "not batch.extend_num_tokens",
    "batch.note is None", "batch.note is not None", "not batch.note is None", "mb_id == -1", "mb_id > 1.5",
    "batch.extend_num_tokens == True", "self.flag",
]


def python_says(condition: str, batch, mb_id, self) -> bool:
    value_text = condition.removeprefix("not ")
    root = value_text.split(" ")[0]
    value = eval(root, {"len": len}, {"batch": batch, "mb_id": mb_id, "self": self})  # the test's ground truth
    if value is None and root == value_text:
        return False  # a bare None is unknown
    return bool(eval(condition, {}, {"batch": batch, "mb_id": mb_id, "self": self}))


@pytest.mark.parametrize("condition", CONDITIONS)
def test_a_condition_holds_exactly_when_python_says_so(condition: str) -> None:
    holds = parse_condition(condition, "when", PARAMS)
    for batch in BATCHES:
        for mb_id in (-1, 0, 2):
            this = MODE(flag=mb_id > 0)
            assert holds(this, (batch, mb_id), {}) is python_says(condition, batch, mb_id, this), (batch, mb_id)


def test_result_is_the_return_value_after_the_call_only() -> None:
    keep = parse_condition("len(result.reqs) > 1", "keep_if", PARAMS, after_call=True)
    assert keep(None, (BATCHES[0],), {}, BATCHES[0]) and not keep(None, (BATCHES[0],), {}, BATCHES[2])
    with pytest.raises(ExtractorError, match="'result' is the return value, known only after the call"):
        parse_condition("result is None", "when", PARAMS)


def test_what_cannot_be_read_or_compared_makes_it_false_never_raises() -> None:
    assert not parse_condition("batch.missing.name == 'X'", "when", PARAMS)(MODE(), (BATCHES[0],), {})
    assert not parse_condition("not batch.missing", "when", PARAMS)(MODE(), (BATCHES[0],), {})
    assert not parse_condition("batch.note > 0", "when", PARAMS)(MODE(), (BATCHES[0],), {})  # None > 0
    assert not parse_condition("not batch.note > 0", "when", PARAMS)(MODE(), (BATCHES[0],), {})
    assert sched_trace.stats()["extract_missing"]  # the unreadable ones were counted


@pytest.mark.parametrize("text, message", [
    ("batch.reqs and mb_id", "is not a value"),
    ("0 < mb_id < 3", "one comparison only"),
    ("mb_id == other", "'other' is not a literal"),
    ("mb_id == [1, 2]", "is not a literal"),
    ("mb_id is 3", "compare with None only"),
    ("mb_id in 3", "'in' needs a tuple or a string"),
    ("batch.__class__.__init__ is None", "dunder"),
    ("bacth.reqs", "Did you mean 'batch'?"),
    ("import os", "is not a condition"),
    ("__import__('os').system('true')", "is not a value"),
])
def test_a_malformed_condition_is_refused_at_declaration_with_the_fix(text: str, message: str) -> None:
    with pytest.raises(ExtractorError) as caught:
        parse_condition(text, "keep_if", PARAMS, after_call=True)
    assert message in str(caught.value) and "keep_if=" in str(caught.value)


def test_conditional_attributes_are_absent_when_their_condition_is_false() -> None:
    attrs = parse_attributes({
        "extend_tokens": "batch.extend_num_tokens if batch.forward_mode.name in ('EXTEND', 'MIXED')",
        "size": "len(batch.reqs)",
    }, PARAMS)
    read = {key: (extract, condition) for key, extract, condition in attrs}
    extract, condition = read["extend_tokens"]
    assert [condition(MODE(), (b,), {}) for b in BATCHES] == [True, False, True]
    assert read["size"][1] is None


def test_callable_conditions() -> None:
    when = parse_condition(lambda instance, args, kwargs: args[1] > 0, "when", PARAMS)
    keep = parse_condition(lambda instance, args, kwargs, result: result == 3, "keep_if", PARAMS, after_call=True)
    assert when(None, (None, 1), {}) and not when(None, (None, 0), {})
    assert keep(None, (), {}, 3) and not keep(None, (), {}, 2)
    with pytest.raises(ExtractorError, match=r"takes \(instance, args, kwargs, result\)"):
        parse_condition(lambda instance: True, "keep_if", PARAMS, after_call=True)


def test_the_c_form_decides_a_planned_condition_and_leaves_the_rest_to_python(hot_path) -> None:
    from sched_trace import _native

    planned = parse_condition("len(batch.reqs) > 0", "when", PARAMS)
    assert type(planned).__name__ == ("Condition" if hot_path == "c" else "function")
    assert planned.spec == "when='len(batch.reqs) > 0'"  # the Python condition's own attributes

    def by_keyword(self, *, batch):
        return batch

    keyword_only = parse_condition("batch.reqs", "when", Parameters(by_keyword))  # no position to plan
    assert type(keyword_only).__name__ == "function"
    assert keyword_only(MODE(), (), {"batch": BATCHES[0]}) is True
    assert (_native.speedups is not None) == (hot_path == "c")


class Awkward:
    """Values whose comparison or truth raises, and one attribute that interrupts."""

    def __eq__(self, other):
        raise ValueError("no equality")

    def __bool__(self):
        raise TypeError("no truth")

    @property
    def stop(self):
        raise KeyboardInterrupt


def test_every_way_in_gives_the_answer_and_count_python_gives(hot_path) -> None:
    cases = [("batch.note == 'x'", (BATCHES[1],)), ("batch == 3", (Awkward(),)), ("batch", (Awkward(),)),
             ("not batch", (Awkward(),)), ("mb_id > 1.5", (BATCHES[0], float("nan"))),
             ("mb_id != 1.5", (BATCHES[0], float("nan"))), ("batch.missing", (BATCHES[0],)),
             ("len(batch) > 0", (BATCHES[0],)), ("batch is None", (None,)), ("batch is not None", (None,))]
    for text, args in cases:
        holds = parse_condition(text, "when", PARAMS)
        unbound = holds(None, (MODE(),) + args, {})  # called through the class: self in args
        bound = holds(MODE(), args, {})
        by_keyword = holds(MODE(), (), dict(zip(("batch", "mb_id"), args)))  # the slow path
        expected = python_answer(text, *args)
        assert (unbound, bound, by_keyword) == (expected,) * 3, text
    before = sched_trace.stats()["extract_missing"].get("when='batch.missing'", 0)
    parse_condition("batch.missing", "when", PARAMS)(MODE(), (BATCHES[0],), {})
    assert sched_trace.stats()["extract_missing"]["when='batch.missing'"] == before + 1  # counted once
    with pytest.raises(KeyboardInterrupt):  # not an Exception: it reaches the scheduler, as in Python
        parse_condition("batch.stop", "when", PARAMS)(MODE(), (Awkward(),), {})


def python_answer(text: str, batch, mb_id=0) -> bool:
    """What the grammar promises, from Python itself: unreadable or uncomparable is false."""
    negate, value_text = text.startswith("not "), text.removeprefix("not ")
    try:
        value = eval(value_text.split(" ")[0], {"len": len}, {"batch": batch, "mb_id": mb_id})
    except Exception:
        return False
    try:
        if value_text.split(" ")[0] == value_text:
            return False if value is None else (not value if negate else bool(value))
        return bool(eval(text, {}, {"batch": batch, "mb_id": mb_id}))
    except Exception:
        return False


def test_a_c_condition_gives_back_every_reference(hot_path) -> None:
    import gc
    import sys

    holds = parse_condition("len(result.reqs) > 1", "keep_if", PARAMS, after_call=True)
    keyed = parse_condition("batch.forward_mode.name in ('EXTEND', 'MIXED')", "when", PARAMS)
    batch, this = BATCHES[0], MODE()
    watched = (batch, batch.reqs, batch.forward_mode, this)
    for _ in range(2):
        holds(this, (batch,), {}, batch), keyed(this, (batch,), {}), keyed(this, (), {"batch": batch})
    gc.collect()
    before = [sys.getrefcount(value) for value in watched]
    for _ in range(500):
        holds(this, (batch,), {}, batch), keyed(this, (batch,), {}), keyed(this, (), {"batch": batch})
    gc.collect()
    assert [sys.getrefcount(value) for value in watched] == before
