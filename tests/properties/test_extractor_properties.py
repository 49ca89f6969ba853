"""The extractor grammar, on arbitrary input: an extractor that never raises, or an ExtractorError."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sched_trace import _extract as extract
from sched_trace._errors import ExtractorError


def scheduler_method(self, batch, mb_id, *, flag=None):
    """A signature to check roots against."""


SIGNATURES = [extract.Parameters(None), extract.Parameters(scheduler_method)]
ATOMS = st.sampled_from(["self", "batch", "mb_id", "flag", "len", "(", ")", ".", " ", "__class__", "__name__",
                         "__qualname__", "__init__", "__globals__", "reqs", "not", "lambda", "x", "_y", "0", "[",
                         "]", "'", "\n", "é", "\t", ",", "*"])
SPECS = st.one_of(st.text(max_size=60), st.lists(ATOMS, max_size=14).map("".join), st.integers(), st.none(),
                  st.binary(max_size=5), st.lists(st.text(max_size=3), max_size=2), st.floats())
ARGUMENTS = st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=3),
                               st.builds(object)), max_size=4).map(tuple)


def steps_of(spec: str) -> list[str]:
    inner = spec.strip()
    inner = inner[4:-1] if inner.startswith("len(") else inner
    return [step.strip() for step in inner.split(".")]


@given(SPECS, st.sampled_from(SIGNATURES), st.text(min_size=1, max_size=10), ARGUMENTS)
def test_any_spec_gives_a_safe_extractor_or_an_error_naming_it(spec, signature, what, args):
    try:
        extractor = extract.parse(spec, what, signature)
    except ExtractorError as error:
        assert str(error).startswith(what), str(error)
        return
    if extractor is None:
        assert spec is None
        return
    steps = steps_of(spec)
    dunders = [index for index, step in enumerate(steps) if step.startswith("__")]
    # Only a trailing type name gets past the grammar.
    assert not dunders or (dunders[0] > 0 and tuple(steps[dunders[0]:]) in extract.TYPE_NAME_STEPS), spec
    for instance in (None, object()):
        extractor(instance, args, {})  # a value, or None when it cannot be read: never an exception
        extractor(instance, args, {"batch": args, "mb_id": 3})
