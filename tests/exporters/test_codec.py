"""The one event encoding: what goes into a frame comes out as the same events, read by field name.

Every test runs on both forms of the encoder (tests/hot_path.py): the C writer
(``_speedups.encode_frame``) and the pickler it follows."""

from __future__ import annotations

import enum
import math
import pickle
import pickletools
import sys
import uuid
from types import MappingProxyType
from typing import Any

import pytest

from sched_trace._events import NO_ATTRS, BatchEvent, RankInfo, RecordedError, RequestEvent, StageEvent
from sched_trace.export import (EventEncoder, decode_events, forget_traceparent, plain_value, register_traceparent,
                                traceparent_of)
from sched_trace._exporter.contexts import ContextCache
from tests.hot_path import hot_path  # noqa: F401 (an autouse fixture: both forms)

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


def counted(rid: str) -> Any:
    """A request without a context whose every read of its id is counted (``type(req).reads``)."""
    class Counted:
        reads = 0

        @property
        def rid(self):
            Counted.reads += 1
            return rid

    return Counted()


def test_a_request_without_a_context_is_read_again_ever_more_rarely_the_table_at_once():
    cache, req = ContextCache(), counted("counted-1")
    Counted = type(req)
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


# --- the C writer: the same frame as the pickler, or the pickler's ------------------


def python_form() -> EventEncoder:
    encoder = EventEncoder()
    encoder._fast = None
    return encoder


def same(left, right) -> bool:
    """Equal, NaN included (repr tells -0.0 from 0.0 and a tuple from a list, as == does not)."""
    return repr(left) == repr(right)


VALUES = [None, True, False, 0, 1, 255, 256, 65535, 65536, -1, -255, -256, -65536, 2 ** 31 - 1, 2 ** 31,
          -2 ** 31, -2 ** 31 - 1, 2 ** 40, -2 ** 40, 2 ** 63 - 1, -2 ** 63, 0.0, -0.0, 1.5, -2.25e300, math.inf,
          -math.inf, math.nan, "", "x", "naïve ☃", "é" * 200, b"", b"\x00ab", b"x" * 300, (), (1, "a"), [],
          [1, [2, (3, None)]], {}, {"a": {"b": [None, 1.0]}}, {1: "int key", (2, 3): "tuple key"}, NO_ATTRS]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:24] for v in VALUES])
def test_the_c_writer_writes_what_the_pickler_writes(hot_path, value):
    events = [stage(value=value, name="x"), RequestEvent("arrived", 1, "r-plain", RANK, 10, None, None, NO_ATTRS),
              BatchEvent("step", 1, 90, 210, RANK, None, 3, 8, {"value": value}, None, 4, 0), stage(value=value)]
    encoder = EventEncoder()
    payload = encoder.encode(events)
    pickletools.dis(payload, out=open("/dev/null", "w"))  # well-formed, opcode by opcode
    assert same(pickle.loads(payload), pickle.loads(python_form().encode(events)))
    decoded = decode_events(payload)
    assert same(decoded, decode_events(python_form().encode(events)))
    assert decoded == events or value != value  # NaN: never equal to itself
    assert decoded[0].rank is decoded[1].rank is decoded[3].rank  # one RankInfo per frame
    assert (encoder.frames_in_c, encoder.frames_in_python) == ((1, 0) if hot_path == "c" else (0, 1))


NOT_PLAIN = [Mode.DECODE, Opaque(), 2 ** 64, -2 ** 63 - 1, "lone \ud800 surrogate", MappingProxyType({"a": 1}),
             {"a": Mode.DECODE}, [Opaque()], {1, 2}, bytearray(b"ab")]


@pytest.mark.parametrize("value", NOT_PLAIN, ids=[repr(v)[:24] for v in NOT_PLAIN])
def test_a_frame_with_anything_else_is_the_picklers(hot_path, value):
    events = [stage(v=1), stage(value=value), stage(v=2)]
    encoder = EventEncoder()
    payload = encoder.encode(events)
    assert payload == python_form().encode(events)
    assert (encoder.frames_in_c, encoder.frames_in_python) == (0, 1)


def test_nesting_deeper_than_the_writer_goes_and_a_list_holding_itself_are_the_picklers():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    looped: list = [1]
    looped.append(looped)
    encoder = EventEncoder()
    decoded = decode_events(encoder.encode([stage(deep=deep, looped=looped)]))[0]
    assert decoded.attrs["deep"] == deep and decoded.attrs["looped"][1] is decoded.attrs["looped"]
    assert encoder.frames_in_c == 0


def test_many_strings_and_ranks_in_one_frame():
    """Past the writer's memo table (1,536 objects) strings are written out; past 64 ranks, each rank is."""
    ranks = [RankInfo("host", 11, tid, "Scheduler", 0, 1, None, ()) for tid in range(80)]
    events = [StageEvent(f"stage-{i}", 2, i, i + 1, ranks[i % 80], None, i, 1, {f"key-{i}": f"value-{i}"}, None, i,
                         None) for i in range(3000)]
    events += events[:100]  # seen again: fetched by memo (index over 255: LONG_BINGET) or written again
    encoder = EventEncoder()
    decoded = decode_events(encoder.encode(events))
    assert decoded == events
    assert decoded[3000].name == "stage-0" and decoded[3000].rank == ranks[0]


def test_request_ids_through_the_remembered_contexts_count_their_sightings_as_the_cache_does():
    encoder, req = EventEncoder(), counted("counted-2")
    Counted = type(req)
    frames = [pickle.loads(encoder.encode([stage(requests=[req])])) for _ in range(100)]
    assert [fields[0][8]["requests"] for _, _, fields in frames] == [("counted-2",)] * 100
    assert Counted.reads == 7 and all(contexts == [] for contexts, _, _ in frames)  # 1, 2, 4 ... 64
    register_traceparent("counted-2", TP)
    try:
        assert pickle.loads(encoder.encode([stage(requests=(req,))]))[0] == [("counted-2", TP)]  # the table, at once
        assert pickle.loads(encoder.encode([stage(requests=[req])]))[0] == []  # sent once
    finally:
        forget_traceparent("counted-2")


ATTACH = {"traceparent": lambda req: setattr(req, "traceparent", TP),
          "trace_context": lambda req: setattr(req, "trace_context", {"traceparent": TP}),
          "external_trace_header": lambda req: setattr(req, "external_trace_header", Carrier(TP)),
          "the table": lambda req: register_traceparent(req.rid, TP)}


@pytest.mark.parametrize("where", ATTACH)
@pytest.mark.parametrize("rid", ["str", "int"])
def test_a_context_attached_to_a_request_seen_before_is_read_at_its_next_power_of_two(where, rid):
    (text,) = rids(1)
    attached = Req(text if rid == "str" else abs(hash(text)))
    expected = str(attached.rid)
    encoder = EventEncoder()
    try:
        for _ in range(5):  # sightings 1-5: no context anywhere
            assert pickle.loads(encoder.encode([stage(requests=[attached])]))[0] == []
        ATTACH[where](attached)
        contexts = [pickle.loads(encoder.encode([stage(requests=[attached])]))[0] for _ in range(4)]
        # the table is read at every sighting; the request itself again at sighting 8
        assert contexts == ([[(expected, TP)], [], [], []] if where == "the table" else [[], [], [(expected, TP)], []])
        assert pickle.loads(encoder.encode([stage(requests=[attached])]))[2][0][8]["requests"] == (expected,)
    finally:
        forget_traceparent(expected)


def test_a_new_request_at_a_freed_ones_address_is_read_afresh_by_the_encoder():
    encoder = EventEncoder()
    for index in range(200):  # freed objects' addresses are reused quickly
        req = Req(f"reused-{index}", TP if index % 2 else None)
        contexts, _, fields = pickle.loads(encoder.encode([stage(requests=[req, req])]))
        assert fields[0][8]["requests"] == (f"reused-{index}",) * 2
        assert contexts == ([(f"reused-{index}", TP)] if index % 2 else [])
        del req


def sightings(encoder: EventEncoder, req: Any) -> int:
    """How many times the encoder's ContextCache has counted ``req`` (0: never read)."""
    known = encoder._contexts._known.get(id(req))
    return known[2] if known is not None else 0


def test_a_batch_of_the_very_requests_of_the_frames_last_takes_its_ids_without_reading_them(hot_path):
    """A decode batch is the same from step to step: one frame of 40 steps reads its requests
    once, whether the scheduler keeps its list (SGLang's ``batch.reqs`` until a request
    joins or leaves) or builds a new one of the same requests."""
    first, second, joined = (counted(rid) for rid in rids(3))
    steady = [first, second]
    events = [stage(requests=steady) for _ in range(20)]  # the same list, step after step
    events += [stage(requests=[first, second]) for _ in range(10)]  # a new list, the same requests
    events += [stage(requests=steady + [joined])]  # one joins: read
    events += [stage(requests=(first, second, joined)) for _ in range(9)]  # a tuple of them: the same
    encoder = EventEncoder()
    decoded = decode_events(encoder.encode(events))
    ids = (first.rid, second.rid, joined.rid)
    assert [event.attrs["requests"] for event in decoded] == [ids[:2]] * 30 + [ids] * 10
    # each counted once per read: the first batch, then the batch it joined
    assert (sightings(encoder, first), sightings(encoder, second), sightings(encoder, joined)) == (2, 2, 1)
    # the next frame reads them again (and counts the sighting): nothing is kept across frames
    assert decode_events(encoder.encode([stage(requests=steady)]))[0].attrs["requests"] == ids[:2]
    assert sightings(encoder, first) == 3


def test_the_same_requests_in_another_order_or_fewer_are_read_again(hot_path):
    a, b, c = (Req(rid) for rid in rids(3))
    batches = [[a, b, c], [a, b, c], [c, b, a], [a, b], [a, b, c], [a, b, c, c], []]
    encoder = EventEncoder()
    decoded = decode_events(encoder.encode([stage(requests=batch) for batch in batches]))
    assert [event.attrs["requests"] for event in decoded] == [tuple(r.rid for r in batch) for batch in batches]
    assert sightings(encoder, a) == 5 and sightings(encoder, c) == 5  # the second batch alone took the first's


def test_a_context_found_in_a_frames_first_batch_travels_once_for_all_of_them(hot_path):
    (rid,) = rids(1)
    req = Req(rid, TP)
    steady = [req]
    contexts, _, fields = pickle.loads(EventEncoder().encode([stage(requests=steady) for _ in range(5)]))
    assert contexts == [(rid, TP)] and [f[8]["requests"] for f in fields] == [(rid,)] * 5


def test_the_frames_last_batch_is_let_go_with_the_frame(hot_path):
    reqs = [Req(rid) for rid in rids(2)]
    events = [stage(requests=reqs), stage(requests=list(reqs))]
    encoder = EventEncoder()
    encoder.encode(events)
    before = [sys.getrefcount(req) for req in reqs]
    for _ in range(200):
        encoder.encode(events)
    assert [sys.getrefcount(req) for req in reqs] == before
    assert encoder._last is None


REQUESTS = {"none": (lambda: None, ()), "bare": (lambda: "bare-id", ("bare-id",)), "one": (lambda: Req("single"), ("single",)),
            "set": (lambda: {Req("in-a-set")}, ("in-a-set",)), "iterator": (lambda: iter([Req("in-gen")]), ("in-gen",))}


@pytest.mark.parametrize("kind", REQUESTS)
def test_requests_that_are_not_a_list_or_tuple_follow_the_python_rules(kind):
    make, expected = REQUESTS[kind]
    assert pickle.loads(EventEncoder().encode([stage(requests=make())]))[2][0][8]["requests"] == expected


def test_contexts_found_before_the_pickler_takes_over_travel_once(hot_path):
    (r1, r2) = rids(2)
    register_traceparent(r2, TP)
    try:
        encoder = EventEncoder()
        events = [stage(requests=[Req(r1, TP)]), RequestEvent("arrived", 1, r2, RANK, 1, None, None, NO_ATTRS),
                  stage(mode=Mode.DECODE)]  # the C writer meets this last, after both contexts
        contexts, _, fields = pickle.loads(encoder.encode(events))
        assert contexts == [(r1, TP), (r2, TP)] and fields[2][8] == {"mode": 2}
        assert encoder.frames_in_python == 1
        assert pickle.loads(encoder.encode(events))[0] == []
    finally:
        forget_traceparent(r2)


def test_strings_a_request_read_drops_from_a_live_list_are_not_mistaken_for_new_ones(hot_path):
    """The C writer fetches a string written before by its address: a request's first read
    runs Python code, which here empties a list an attribute names (freeing its strings)
    and builds new strings, at the freed addresses as the allocator goes."""
    live = ["".join(("name-", str(index))) for index in range(64)]  # made at run time: not interned
    after: list = []

    class Dropping:
        @property
        def rid(self):
            live.clear()
            after.extend("".join(("new-", str(index))) for index in range(64))
            return "dropping-1"

    events = [stage(names=live), stage(requests=[Dropping()]), stage(names=after)]
    decoded = decode_events(EventEncoder().encode(events))
    assert decoded[2].attrs["names"] == [f"new-{index}" for index in range(64)]
    assert decoded[1].attrs["requests"] == ("dropping-1",)


def test_an_interrupt_while_a_request_is_read_again_reaches_the_caller(hot_path):
    class Interrupting:
        rid, reads = "interrupting-1", 0

        @property
        def traceparent(self):
            Interrupting.reads += 1
            if Interrupting.reads > 1:  # its first read passes; the next one is the re-read
                raise KeyboardInterrupt
            return None

    encoder, req = EventEncoder(), Interrupting()
    assert pickle.loads(encoder.encode([stage(requests=[req])]))[2][0][8]["requests"] == ("interrupting-1",)
    with pytest.raises(KeyboardInterrupt):
        encoder.encode([stage(requests=[req])])


def test_the_writer_gives_back_every_reference_it_takes(hot_path):
    req, name, value = Req(rids(1)[0], TP), "held-name", "held-value"
    attrs = {"requests": [req], "v": value, "n": [1, 2]}
    events = [StageEvent(name, 2, 1, 2, RANK, None, 1, 1, attrs, None, 1, None),
              RequestEvent("arrived", 1, req.rid, RANK, 1, None, None, NO_ATTRS)]
    encoder = EventEncoder()
    encoder.encode(events)  # the first sighting keeps the request's context: counted from here
    watched = [req, name, value, attrs, attrs["n"], RANK, req.rid, NO_ATTRS, events[0], StageEvent]
    before = [sys.getrefcount(obj) for obj in watched]
    for _ in range(500):
        encoder.encode(events)
    assert [sys.getrefcount(obj) for obj in watched] == before
