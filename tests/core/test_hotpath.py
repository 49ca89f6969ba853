"""The generated hot path reads every extractor shape as the extractor itself would.

Each grammar extractor is written into the probe's traced function as an expression;
whatever that expression cannot read (a keyword argument, a default, a call through
the class, a missing attribute) falls back to the extractor. The ground truth here is
the extractor object called directly on the same arguments.
"""

from __future__ import annotations

import traceback

import pytest

import sched_trace
from sched_trace import _extract


class Batch:
    def __init__(self, reqs, mode="decode"):
        self.reqs = reqs
        self.mode = mode


class Worker:
    def __init__(self, queue):
        self.queue = queue
        self.name = "w0"

    def step(self, batch, mb_id=7, *, note=None):
        if batch is None and note == "raise":
            raise KeyError("the scheduler's own error")
        return mb_id


SHAPES = {
    "self.name": "self.name",
    "len(self.queue)": "len(self.queue)",
    "mb_id": "mb_id",
    "batch.mode": "batch.mode",
    "len(batch.reqs)": "len(batch.reqs)",
    "batch.__class__.__name__": "batch.__class__.__name__",
}

CALLS = {
    "positional": lambda w, b: w.step(b, 3),
    "keywords": lambda w, b: w.step(batch=b, mb_id=4),
    "default": lambda w, b: w.step(b),
    "through the class": lambda w, b: Worker.step(w, b, 5),
    "unreadable": lambda w, b: w.step(None, 6),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_every_inlined_shape_reads_what_the_extractor_reads(sched_trace_recorder, call):
    attrs = {f"a{index}": spec for index, spec in enumerate(SHAPES.values())}
    sched_trace.instrument(f"{__name__}:Worker.step", stage="step", microbatch="mb_id",
                           batch_size="len(batch.reqs)", attrs=attrs)
    worker, batch = Worker([1, 2]), Batch(["r1", "r2", "r3"])
    CALLS[call](worker, batch)
    (event,) = sched_trace_recorder.stages("step")
    missing = dict(sched_trace.stats()["extract_missing"])  # before the ground truth below counts its own
    params = _extract.Parameters(Worker.step)
    args = {"positional": (batch, 3), "keywords": (), "default": (batch,), "through the class": (batch, 5),
            "unreadable": (None, 6)}[call]
    kwargs = {"batch": batch, "mb_id": 4} if call == "keywords" else {}
    instance = worker
    expected = {f"a{index}": _extract.parse(spec, "attrs", params)(instance, args, kwargs)
                for index, spec in enumerate(SHAPES.values())}
    assert event.attrs == expected
    assert event.microbatch == _extract.parse("mb_id", "microbatch", params)(instance, args, kwargs)
    assert event.batch_size == (None if call == "unreadable" else 3)
    if call == "unreadable":  # counted once per unreadable value, by the extractor's slow path
        assert missing == {"batch_size='len(batch.reqs)'": 1, "attrs['a3']='batch.mode'": 1,
                           "attrs['a4']='len(batch.reqs)'": 1}
    else:
        assert missing == {}


def test_every_shape_is_written_in_and_only_checked_names_are():
    params = _extract.Parameters(Worker.step)
    inline = {spec: _extract.parse(spec, "attrs", params).inline for spec in SHAPES}
    assert inline == {
        "self.name": "instance.name",
        "len(self.queue)": "len(instance.queue)",
        "mb_id": "args[2 if instance is None else 1]",
        "batch.mode": "args[1 if instance is None else 0].mode",
        "len(batch.reqs)": "len(args[1 if instance is None else 0].reqs)",
        "batch.__class__.__name__": "args[1 if instance is None else 0].__class__.__name__",
    }
    assert _extract.parse("self", "attrs", params).inline is None  # its fast path does not raise
    assert _extract.parse("note", "attrs", params).inline is None  # keyword-only: no position
    # Python source normalises non-ASCII names (NFKC); getattr reads them as written: a call
    assert _extract.parse("batch.caf\u00e9", "attrs", params).inline is None


def test_a_traceback_through_a_traced_call_shows_the_generated_lines(sched_trace_recorder, hot_path):
    sched_trace.instrument(f"{__name__}:Worker.step", stage="step", batch_size="len(batch.reqs)")
    with pytest.raises(KeyError) as raised:
        Worker([]).step(None, note="raise")
    text = "".join(traceback.format_exception(raised.type, raised.value, raised.tb))
    assert 'raise KeyError("the scheduler\'s own error")' in text
    if hot_path == "python":
        assert "<sched-trace probe 'step'" in text
        assert "return wrapped(*args, **kwargs) if kwargs else wrapped(*args)" in text
    else:  # the C form adds no frame of its own
        assert "sched-trace probe" not in text
    (event,) = sched_trace_recorder.stages("step")
    assert event.error is raised.value
