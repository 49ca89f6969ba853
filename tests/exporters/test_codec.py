"""The one event encoding: what goes into a frame comes out as the same events, read by field name."""

from __future__ import annotations

import enum
import pickle
import uuid
from types import MappingProxyType

import pytest

from sched_trace._events import NO_ATTRS, BatchEvent, RankInfo, RecordedError, RequestEvent, StageEvent
from sched_trace.export import (EventEncoder, decode_events, forget_traceparent, plain_value, register_traceparent,
                                traceparent_of)
from sched_trace._exporter.contexts import ContextCache

TP = "00-0000000000000000000000000000abcd-00000000000000ef-01"
RANK = RankInfo("host", 11, 22, "Scheduler", tp_rank=0, pp_rank=1, dp_rank=None, extra=(("stage_index", 3),))


class Mode(enum.IntEnum):
    DECODE = 2


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


class Req:
    def __init__(self, rid, traceparent=None, prompt="secret prompt"):
        self.rid, self.traceparent, self.prompt = rid, traceparent, prompt


def stage(**attrs) -> StageEvent:
    return StageEvent("run_batch_cpu", 4, 100, 200, RANK, 7, 3, 8, attrs or NO_ATTRS, None, 5, 4)


def round_trip(events, encoder=None):
    return decode_events((encoder or EventEncoder()).encode(events))


def test_events_come_back_equal_with_their_types_and_shared_rank():
    events = [stage(queue_depth=3), BatchEvent("step", 1, 90, 210, RANK, None, 3, 8, NO_ATTRS, None, 4, 0),
              RequestEvent("finished", 205, "r1", RANK, 10, 5, 3, MappingProxyType({"finish_reason": "stop"}))]
    decoded = round_trip(events)
    assert decoded == events
    assert [type(e) for e in decoded] == [StageEvent, BatchEvent, RequestEvent]
    assert decoded[0].rank is decoded[1].rank is decoded[2].rank  # one RankInfo per frame
    assert decoded[0].rank.extras == {"stage_index": 3} and decoded[2].attrs["finish_reason"] == "stop"


def test_values_that_are_not_plain_data_leave_as_what_a_trace_shows():
    decoded, = round_trip([stage(mode=Mode.DECODE, obj=Opaque(), nested={"a": [Mode.DECODE, Opaque()]},
                                 long=Opaque.__new__(type("Long", (), {"__str__": lambda s: "x" * 1000})))])
    assert decoded.attrs == {"mode": 2, "obj": "opaque!", "nested": {"a": [2, "opaque!"]}, "long": "x" * 256}
    assert type(decoded.attrs["mode"]) is int
    assert plain_value({"mode": Mode.DECODE, "t": (Opaque(), 1.5)}) == {"mode": 2, "t": ("opaque!", 1.5)}


def test_an_exception_travels_as_remote_error_with_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    event = stage()._replace(error=error)
    decoded, = round_trip([event])
    assert isinstance(decoded.error, RecordedError) and decoded.error == error
    assert (decoded.error.type_name, decoded.error.message) == ("ValueError", "boom")
    assert "raise ValueError" in decoded.error.stacktrace
    assert decoded == event


def rids(count: int) -> list[str]:
    """Request ids no other test used: the trace-context table is process-wide."""
    return [f"codec-{uuid.uuid4().hex}" for _ in range(count)]


def test_requests_leave_as_ids_and_their_contexts_travel_once():
    encoder = EventEncoder()
    r1, r2, r3, r4 = rids(4)
    requests = [Req(r1, TP), Req(r2), {"request_id": r3}, r4]
    first = encoder.encode([stage(requests=requests)])
    assert b"secret prompt" not in first
    decoded, = decode_events(first)
    assert decoded.attrs["requests"] == (r1, r2, r3, r4)
    assert traceparent_of(r1) == TP and traceparent_of(r2) is None  # landed in the receiving table
    contexts, _, _ = pickle.loads(first)
    assert contexts == [(r1, TP)]
    assert pickle.loads(encoder.encode([stage(requests=requests)]))[0] == []  # sent once
    encoder.reset()  # a new exporter process: told again
    assert pickle.loads(encoder.encode([stage(requests=requests)]))[0] == [(r1, TP)]
    forget_traceparent(r1)


def test_a_registered_context_travels_with_the_request_events():
    encoder = EventEncoder()
    (r9,) = rids(1)
    register_traceparent(r9, TP)
    payload = encoder.encode([RequestEvent("arrived", 1, r9, RANK, None, None, None, NO_ATTRS)])
    assert pickle.loads(payload)[0] == [(r9, TP)]
    forget_traceparent(r9)


def test_only_event_frames_decode():
    with pytest.raises(ValueError):
        decode_events(pickle.dumps(([], [dict], [()])))


# --- reading a request's id and context, remembered per live request object -----------


def test_a_request_seen_again_gives_the_same_context():
    cache = ContextCache()
    (r1,) = rids(1)
    req = Req(r1, TP)
    assert cache.context(req) == (r1, TP)
    req.rid = "changed"  # remembered for the object's lifetime: its identity does not change
    assert cache.context(req) == (r1, TP)


def test_a_traceparent_attached_later_is_seen():
    cache = ContextCache()
    (r2,) = rids(1)
    req = Req(r2)
    assert cache.context(req) == (r2, None)
    req.traceparent = TP
    assert cache.context(req) == (r2, TP)


def test_a_new_object_at_a_reused_address_is_read_afresh():
    cache = ContextCache()
    for index in range(200):  # freed objects' ids are reused quickly
        req = Req(f"r{index}", TP)
        assert cache.context(req) == (f"r{index}", TP)
        del req


def test_a_request_without_a_context_is_read_again_ever_more_rarely_the_table_at_once():
    class Counted:
        reads = 0

        @property
        def rid(self):
            Counted.reads += 1
            return "counted-1"

    cache, req = ContextCache(), Counted()
    sightings = [cache.context(req) for _ in range(100)]
    assert sightings == [("counted-1", None)] * 100
    assert Counted.reads == 7  # sightings 1, 2, 4, 8, 16, 32, 64
    register_traceparent("counted-1", TP)
    try:
        assert cache.context(req) == ("counted-1", TP)  # the table: at the next sighting
    finally:
        forget_traceparent("counted-1")


def test_a_bare_id_is_its_own_request_and_takes_its_context_from_the_table():
    cache = ContextCache()
    assert cache.context("bare-1") == ("bare-1", None)
    assert cache.context(7) == ("7", None)
    register_traceparent("bare-1", TP)
    try:
        assert [cache.context("bare-1") for _ in range(3)] == [("bare-1", TP)] * 3
    finally:
        forget_traceparent("bare-1")


class Carrier:
    def __init__(self, traceparent):
        self.traceparent = traceparent


class Headers(dict):
    """A dict subclass: a Mapping, read by key."""


class Raising:
    @property
    def rid(self):
        raise RuntimeError("not yet")

    request_id = "fallback-id"

    @property
    def traceparent(self):
        raise RuntimeError("broken")


def test_every_place_a_request_keeps_its_id_and_context_is_read():
    from sched_trace._exporter.contexts import request_context

    (r1,) = rids(1)
    with_headers, with_carrier = Req(r1), Req(r1)
    with_headers.trace_context = {"traceparent": TP}
    with_carrier.external_trace_header = Carrier(TP)
    cases = [
        ({"rid": r1, "traceparent": TP}, (r1, TP)),          # a mapping, read by key
        (Headers(id=7, traceparent=Carrier(TP)), ("7", TP)),  # a dict subclass; a carrier object
        (with_headers, (r1, TP)), (with_carrier, (r1, TP)),
        (Req(r1, "not a traceparent"), (r1, None)),
        (Raising(), ("fallback-id", None)),                     # raising properties: the next name, no context
    ]
    for _ in range(2):  # the second time, each type's kind is remembered
        assert [request_context(request) for request, _ in cases] == [expected for _, expected in cases]
