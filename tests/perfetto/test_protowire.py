"""The hand-written wire bytes equal what the perfetto protobuf messages serialize to."""

from __future__ import annotations

import random

import pytest

from sched_trace._events import BatchEvent, RankInfo, StageEvent
from sched_trace.traceio import PerfettoEncoder, read_perfetto
from sched_trace.traceio._protowire import annotation, annotation_field, varint

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")


def _reference_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_varint_matches_the_definition_for_every_width():
    draw = random.Random(7)
    values = [0, 1, 127, 128, 16383, 16384, (1 << 63) - 1, -1, -(1 << 63), (1 << 64) - 1]
    values += [draw.getrandbits(draw.randint(1, 63)) * draw.choice((1, -1)) for _ in range(5000)]
    for value in values:
        assert varint(value) == _reference_varint(value), value


class Request:
    def __str__(self) -> str:
        return "req-1"


def _events() -> list:
    main = RankInfo("host-é", 4242, 7, "Scheduler", tp_rank=1, pp_rank=0, dp_rank=2, extra=(("rank", 3),))
    long = RankInfo("h", 1, 2, "L" * 200, pp_rank=3)
    odd = {"empty_list": [], "empty_dict": {}, "empty_tuple": (), "low": -(1 << 63), "high": 1 << 63,
           "nan": float("nan"), "neg_zero": -0.0, "nested": [[1, [2]], {"x": None, 3: True}], "flag": False,
           "queue_depth": 2.5, "snow": "☃" * 100, "object": Request(), "none": None}
    events = []
    for step in range(4):
        start = 1_795_891_879_262_931_434 + step * 10_000
        events.append(BatchEvent("step", 1, start, start + 9000, main, None, step, 32, {}, None, 100 + step, 0))
        for mb in range(3):
            events.append(StageEvent("forward", 2, start + mb, start + 500 + mb, main, mb, step, 8,
                                     {"queue_depth": mb, "phase": "decode"}, None, 10 * step + mb, 100 + step))
        events.append(StageEvent("x" * 300, 3, start, start + 1, long, (step, "mb"), -5, -(1 << 40), odd,
                                 ValueError("boom"), 1 << 62, 0))
        events.append(StageEvent("flags", 3, start, start + 1, long, step, step, None,
                                 {"a": 1, "b": True, "c": 1.0} if step % 2 else {"a": True, "b": 1, "c": 1},
                                 None, step, 0))
    events.append(StageEvent("open", 0, 1, None, main, 0, 0, 0, {}, None, 1, 0))  # no end: skipped
    return events


@pytest.mark.parametrize("flows", [True, False])
def test_encode_gives_the_bytes_protobuf_serializes(flows):
    events = _events()
    wire, messages = PerfettoEncoder(77, flows=flows), PerfettoEncoder(77, flows=flows)
    for chunk in (events[:3], events[3:], events):  # descriptors in the first chunk that needs them only
        assert wire.encode(chunk) == messages.encode_messages(chunk)


def test_the_bytes_parse_back_into_the_same_events():
    events = _events()
    encoder = PerfettoEncoder(5)
    data = encoder.encode(events)
    parsed = pb.Trace()
    parsed.ParseFromString(data)
    assert sum(1 for p in parsed.packet if p.HasField("track_event") and p.track_event.type == 1) == 24
    read = read_perfetto("mem", data).events
    assert [(e.name, e.start_ns, e.end_ns, e.microbatch) for e in read] == \
        [(e.name, e.start_ns, e.end_ns, [*e.microbatch] if isinstance(e.microbatch, tuple) else e.microbatch)
         for e in events if e.end_ns is not None]
    assert read[4].attrs["object"] == "req-1" and str(read[4].error) == "ValueError: boom"


def test_cached_annotations_tell_equal_values_of_other_types_apart():
    for value in ({"x": 1}, {"x": True}, {"x": 1}, {"x": True}, {"x": None}, {"x": "1"}, {"x": 0.0}, {"x": -0.0},
                  1, True, 1, True, "1", 0, False, 0):
        assert annotation_field(b"\x22", "a", value) == b"\x22" + varint(len(annotation("a", value))) + \
            annotation("a", value)
