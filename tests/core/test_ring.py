"""An exporter's buffer in C (``_speedups.Ring``) holds a probe's events as records.

Ground truth: a Python hook (MemoryRecorder) registered beside the exporter is handed
the event objects the probe makes for it; what the exporter's thread drains from its
ring must be those events, equal field for field and in the same order. What the
scheduler thread allocates is read with tracemalloc, references with
``sys.getrefcount``. Each test runs on both forms (tests/core/conftest.py): the Python
form's buffer is a deque, and the same events must come out.
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
import tracemalloc

import pytest

import sched_trace
from sched_trace import _native, _probe
from sched_trace.export import EventEncoder, decode_events
from sched_trace.recorder import BackgroundExporter
from sched_trace.testing import MemoryRecorder


class Request:
    def __init__(self, rid):
        self.rid = rid


class Token:
    """A micro-batch that is an object: the ring holds a reference to it."""


class StepError(KeyError):
    pass


class Engine:
    name = "e0"

    def step(self, reqs, mb=0):
        self.schedule(reqs)
        for req in reqs:
            self.finish(req)
        if mb == "raise":
            raise StepError("the engine's own error")
        return len(reqs)

    def schedule(self, reqs):
        return len(reqs)

    def finish(self, req):
        return req.rid


class Buffered:
    """A plugin whose every event hook is a BackgroundExporter's append (what the built-in
    exporters register): its buffer is a Ring in the C form."""

    def __init__(self, capacity=1000, name="ring-test"):
        self.exported = []
        self.front = BackgroundExporter(self.exported.extend, name=name, capacity=capacity)
        for hook in ("batch_start", "batch_end", "stage_start", "stage_end", "request"):
            setattr(self, f"sched_trace_{hook}", self.front.append)


def traced(**step_options):
    sched_trace.instrument(f"{__name__}:Engine.step", kind="batch", stage="step", microbatch="mb", **step_options)
    sched_trace.instrument(f"{__name__}:Engine.schedule", stage="schedule", batch_size="len(reqs)",
                           attrs={"who": "self.name"})
    sched_trace.instrument(f"{__name__}:Engine.finish", kind="request", phase="finished", request_id="req.rid")


@pytest.fixture
def exporter():
    plugin = Buffered()
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    yield plugin
    sched_trace.unregister(plugin)
    plugin.front.shutdown(5.0)


def exported(plugin):
    assert plugin.front.flush(5.0)
    return plugin.exported


def test_the_exporter_drains_the_very_events_the_probe_makes_in_their_order(exporter, hot_path):
    recorder = MemoryRecorder(starts=True)
    sched_trace.register(recorder, name="ring-recorder")
    try:
        traced()
        engine = Engine()
        engine.step([Request("a"), Request("b")], Token())
        with pytest.raises(StepError):
            engine.step([Request("c")], "raise")
        events = exported(exporter)
    finally:
        sched_trace.unregister(recorder)
    if hot_path == "c":
        assert type(exporter.front.buffer._items).__name__ == "Ring"
    spans = [event for event in events if event.kind != "request"]
    requests = [event for event in events if event.kind == "request"]
    assert spans == recorder.events and [type(e) for e in spans] == [type(e) for e in recorder.events]
    assert requests == recorder.request_events
    # one order for records and objects: each step's request events inside its span
    names = [event.request_id if event.kind == "request" else (event.name, event.end_ns is not None)
             for event in events]
    assert names == [("step", False), ("schedule", False), ("schedule", True), "a", "b", ("step", True),
                     ("step", False), ("schedule", False), ("schedule", True), "c", ("step", True)]
    failed = spans[-1]
    assert isinstance(failed.error, StepError) and failed.microbatch == "raise"


@pytest.mark.parametrize("others", [0, 2])
def test_with_only_exporters_listening_no_event_object_is_made_on_the_scheduler_thread(exporter, hot_path, others):
    more = [Buffered(name=f"ring-more-{i}") for i in range(others)]
    for plugin in more:
        sched_trace.register(plugin)
    traced()
    engine, reqs, token = Engine(), [], Token()
    engine.step(reqs, token)  # the exporters' threads start; their rings take their first slots
    stall, steps = threading.Event(), 50
    for plugin in [exporter, *more]:
        plugin.front.export_batch = lambda batch, plugin=plugin: (stall.wait(5.0), plugin.exported.extend(batch))
    try:
        engine.step(reqs, token)  # the threads take these and are held in export(): the next steps stay buffered
        for plugin in [exporter, *more]:
            plugin.front._wake.set()
            while plugin.front.in_flight == 0:
                threading.Event().wait(0.01)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(steps):
            engine.step(reqs, token)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        stall.set()
        for plugin in more:
            sched_trace.unregister(plugin)
            plugin.front.shutdown(5.0)
    kept = sum(stat.count_diff for stat in after.compare_to(before, "filename") if stat.count_diff > 0)
    # held per step: 2 spans x (start, end) events. As objects: 4 tuples, 4 times (ints), the
    # attributes dict, the 2 span ids (ints past 256). As records: the attributes dict and the
    # span ids, no tuple, no time.
    if hot_path == "c":
        assert kept <= 4 * steps, kept
    else:
        assert kept >= 8 * steps, kept
    assert len(exported(exporter)) == 4 * (steps + 2)
    assert all(len(plugin.exported) == 4 * (steps + 2) for plugin in more)


def test_a_full_ring_drops_and_counts_as_the_deque_did(hot_path):
    plugin = Buffered(capacity=6)
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    stall, front = threading.Event(), plugin.front
    try:
        traced()
        engine, token = Engine(), Token()
        engine.step([], token)
        assert front.flush(5.0)
        front.export_batch = lambda batch: (stall.wait(5.0), plugin.exported.extend(batch))
        engine.step([], token)  # its 4 events: taken by the thread, held in export()
        front._wake.set()
        while front.in_flight == 0:
            threading.Event().wait(0.01)
        for _ in range(5):  # 20 events, 6 fit
            engine.step([], token)
        stats = front.stats()
        assert (stats["buffered"], stats["dropped"]) == (6, 14)
        stall.set()
        events = exported(plugin)
        assert len(events) == 4 + 4 + 6
        assert [event.name for event in events[8:]] == ["step", "schedule", "schedule", "step", "step", "schedule"]
        assert front.stats()["received"] == 4 + 4 + 20
    finally:
        stall.set()
        sched_trace.unregister(plugin)
        front.shutdown(5.0)


def test_every_reference_a_record_holds_is_given_back(exporter, hot_path):
    traced()
    engine, token, reqs = Engine(), Token(), [Request("a")]

    def calls():
        for _ in range(20):
            engine.step(reqs, token)
        try:
            engine.step(reqs, "raise")
        except StepError:
            pass
        assert exporter.front.flush(5.0)
        del exporter.exported[:]

    calls()
    gc.collect()
    watched = (token, reqs[0].rid, Engine.name)
    before = [sys.getrefcount(value) for value in watched]
    for _ in range(20):
        calls()
    gc.collect()
    assert [sys.getrefcount(value) for value in watched] == before


def ring():
    if _native.speedups is None:
        pytest.skip("the C form's own type")
    return _native.speedups.Ring()


def test_a_ring_is_first_in_first_out_as_it_grows_and_wraps(hot_path):
    if hot_path == "python":
        pytest.skip("the C form's own test: one run is enough")
    items, expected, taken, n = ring(), [], [], 0
    for round_ in range(40):  # pushes and pops out of step: the oldest wraps round the end
        for _ in range(round_ * 13 % 700):
            items.append(n)
            expected.append(n)
            n += 1
        count = min(len(items), round_ * 11 % 500)
        if round_ % 2:  # one by one, or moved out as a batch
            taken.extend(items.popleft() for _ in range(count))
        else:
            batch = items.take(count)
            assert len(batch) == count
            taken.extend(batch)
        assert len(items) == len(expected) - len(taken)
        assert list(items) == expected[len(taken):]  # iteration copies
    while len(items):
        taken.append(items.popleft())
    assert taken == expected
    with pytest.raises(IndexError, match="empty ring"):
        items.popleft()
    with pytest.raises(TypeError, match="no arguments"):
        type(items)(10)


def test_a_ring_lets_go_of_what_it_holds(hot_path):
    if hot_path == "python":
        pytest.skip("the C form's own test: one run is enough")
    held = Token()
    items = ring()
    before = sys.getrefcount(held)
    for _ in range(1000):
        items.append(held)
    assert sys.getrefcount(held) == before + 1000
    items.clear()
    assert sys.getrefcount(held) == before and len(items) == 0
    for _ in range(10):
        items.append(held)
    del items
    assert sys.getrefcount(held) == before
    cycle = ring()
    cycle.append(cycle)  # only the collector can free it: the ring is traversed
    gc.collect()
    watch = ring()
    watch.append(held)
    cycle.append(watch)
    del cycle, watch
    gc.collect()
    assert sys.getrefcount(held) == before


def _hold_in_export(front, stall, engine, mb=0):
    """The exporter thread held inside an export (of step ``mb``) until ``stall`` is set, so
    that the steps after it stay in the buffer for the test to take."""
    front.export_batch = lambda batch: stall.wait(5.0)
    engine.step([], mb)
    front._wake.set()
    while front.in_flight == 0:
        threading.Event().wait(0.01)


def test_the_frame_encoder_writes_a_taken_batch_byte_for_byte_as_its_events(hot_path):
    """The C encoder reads a Taken batch's records without making events: its frame must be the
    one written for the very events the batch stands for (made from it), and decode to them."""
    if hot_path == "python":
        pytest.skip("the C form's own test: one run is enough")
    plugin = Buffered()
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    stall, front = threading.Event(), plugin.front
    try:
        traced()
        engine = Engine()
        engine.step([Request("warm")], 0)  # the thread starts
        assert front.flush(5.0)
        _hold_in_export(front, stall, engine)
        for mb in range(30):  # records (the stages) and objects (the request events) in one batch
            engine.step([Request(f"r{mb}")], mb)
        taken = front.buffer.take(10_000)
        assert type(taken).__name__ == "Taken" and len(taken) == 30 * 5 and len(front.buffer) == 0
        events = list(taken)  # each step: its start, schedule's start and end, a request event, its end
        assert [e.kind for e in events[:5]] == ["batch", "stage", "stage", "request", "batch"]
        assert events == [taken[i] for i in range(len(taken))] and taken + [None] == events + [None]
        direct, made = EventEncoder(), EventEncoder()
        frame = direct.encode(taken)
        assert direct.counters()["frames_in_c"] == 1
        assert frame == made.encode(events)
        assert decode_events(frame) == decode_events(made.encode(events))
        with pytest.raises(StepError):
            engine.step([Request("last")], "raise")  # an error: not plain data, the Python form's frame
        taken = front.buffer.take(10_000)
        direct, made = EventEncoder(), EventEncoder()
        assert direct.encode(taken) == made.encode(list(taken))
        assert direct.counters()["frames_in_python"] == 1
        assert len(front.buffer.take(5)) == 0
    finally:
        stall.set()
        sched_trace.unregister(plugin)
        front.shutdown(5.0)


def test_a_record_holds_its_ids_as_integers_and_they_come_back_the_same(hot_path, monkeypatch):
    """A record keeps its span, parent and batch ids as C integers where they fit in 61 bits
    (objects past that). Ground truth: the counters the probes draw them from, started just
    below that limit: the events drained from records, and the frame the encoder writes from
    taken records, carry exactly the ids drawn, on both sides of it."""
    if hot_path == "python":
        pytest.skip("the C form's own test: one run is enough")
    limit = 1 << 61
    first_span, first_batch = limit - 5, limit - 3
    monkeypatch.setitem(_probe._HELPERS, "_next_span_id", itertools.count(first_span).__next__)
    monkeypatch.setitem(_probe._HELPERS, "_next_batch_id", itertools.count(first_batch).__next__)
    plugin = Buffered()
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    front = plugin.front
    stall = threading.Event()
    try:
        traced()
        engine = Engine()
        engine.step([], 0)  # the thread starts; drained as events made of the records
        assert front.flush(5.0)
        drained = list(plugin.exported)
        _hold_in_export(front, stall, engine, 1)
        for mb in range(2, 5):
            engine.step([], mb)
        taken = front.buffer.take(10_000)
        assert type(taken).__name__ == "Taken"
        events = list(taken)
    finally:
        stall.set()
        sched_trace.unregister(plugin)
        front.shutdown(5.0)

    def expected(step):  # (name, span id, parent id (0: none), batch id) of step ``step``'s four events
        span, batch = first_span + 2 * step, first_batch + step
        return [("step", span, 0, batch), ("schedule", span + 1, span, batch),
                ("schedule", span + 1, span, batch), ("step", span, 0, batch)]

    def ids(found):
        return [(e.name, e.span_id, e.parent_id, e.batch_id) for e in found]

    assert ids(drained) == expected(0)
    assert ids(events) == expected(2) + expected(3) + expected(4)
    assert all(type(e.span_id) is int and type(e.batch_id) is int for e in drained + events)
    direct, objects = EventEncoder(), EventEncoder()
    frame = direct.encode(taken)
    assert direct.counters()["frames_in_c"] == 1
    assert frame == objects.encode(events)
    assert ids(decode_events(frame)) == ids(events)
