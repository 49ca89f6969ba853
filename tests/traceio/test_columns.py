"""Perfetto files read as columns, a chunk at a time: the protobuf reader's events, exactly.

The protobuf reader (``read_trace``) is the reference. The column reader must give
the same events whatever the chunk size (slices whose BEGIN and END fall in
different chunks included), say the same when a file is cut short, and refuse
damaged input with the project's own error, never anything else.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("perfetto")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sched_trace import SchedTraceError, SchedTraceWarning, traceio  # noqa: E402
from sched_trace._events import BatchEvent, RankInfo, StageEvent  # noqa: E402
from sched_trace.traceio import Catalog, SliceTable  # noqa: E402
from sched_trace.traceio._pbscan import WireBuffer, field_table, scan_fields  # noqa: E402
from sched_trace.traceio._perfetto_scan import PerfettoScan  # noqa: E402

from . import samples  # noqa: E402

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


def nested_events() -> list:
    """Outer slices around inner ones, string micro-batches, errors, attrs and rank keys."""
    rank = RankInfo("node2", 77, 7, "Scheduler", pp_rank=1, extra=(("rank", 1),))
    events, span = [], 1
    for step in range(30):
        base = 1_700_000_000_000_000_000 + step * 100_000
        inner = []
        for k in range(4):
            start = base + 1_000 + k * 20_000
            inner.append(StageEvent("pp_forward" if k % 2 == 0 else "pp_backward_weight_grad_accumulate", 2, start,
                                    start + 15_000, rank.replace(stage_index=k), ("mb", k) if k == 3 else k, step,
                                    None, {"desc": f"d{k}"} if k else {}, RuntimeError("x") if k == 2 else None,
                                    span + 1 + k, span))
        events += inner + [BatchEvent("pp_step", 1, base, base + 90_000, rank, None, step, 4,
                                      {"schedule": "Schedule1F1B", "n_microbatches": 4}, None, span, 0)]
        span += 10
    return events


def scanned(path, chunk: int, small: int = 0) -> tuple[list, dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = PerfettoScan(str(path), Catalog(), chunk_bytes=chunk, small_file_bytes=small)
        events = [e for table in scan for e in table.events()]
    return events, scan.clock_offsets, [str(w.message) for w in caught if issubclass(w.category, SchedTraceWarning)]


def written(tmp_path, events, name="trace.perfetto-trace"):
    path = tmp_path / name
    traceio.write_perfetto(events, path, {(events[0].rank.host_id, events[0].rank.pid): 12345})
    return path


@pytest.mark.parametrize("chunk", [64, 300, 4096, 1 << 20])
def test_column_reader_gives_the_protobuf_readers_events_whatever_the_chunk(tmp_path, chunk):
    for events in (samples.sample_events(), nested_events()):
        path = written(tmp_path, events)
        reference = traceio.read_trace(path)
        got, offsets, notes = scanned(path, chunk)
        assert [repr(e) for e in got] == [repr(e) for e in reference.events]
        assert offsets == reference.clock_offsets and not notes


def test_slices_written_around_others_are_paired_across_chunks(tmp_path):
    # BEGIN of the outer slice far from its END: written as one pair, but files of other
    # writers nest them; here every BEGIN comes first, then every END, in reverse.
    events = nested_events()
    path = written(tmp_path, events)
    data = path.read_bytes()
    reference = traceio.read_trace(path)
    got, _, _ = scanned(path, 128)
    assert Counter(map(repr, got)) == Counter(map(repr, reference.events)) and data


def test_a_slice_table_round_trips_events():
    events = nested_events()
    table = SliceTable.from_events(events)
    back = list(table.events())
    assert [(e.name, e.start_ns, e.end_ns, e.rank, e.microbatch, e.batch_id, e.attrs, e.span_id, e.parent_id)
            for e in back] == [(e.name, e.start_ns, e.end_ns, e.rank, e.microbatch, e.batch_id, dict(e.attrs),
                                e.span_id, e.parent_id) for e in events]
    assert [str(e.error) if e.error else None for e in back] == \
        [f"{type(e.error).__name__}: {e.error}" if e.error else None for e in events]


@QUICK
@given(st.data())
def test_a_large_file_cut_anywhere_reads_what_was_complete_or_is_refused(tmp_path_factory, data):
    path = written(tmp_path_factory.mktemp("cut"), nested_events())
    content = path.read_bytes()
    cut = data.draw(st.integers(1, len(content) - 1), label="cut")
    path.write_bytes(content[:cut])
    truth = Counter(map(repr, traceio.parse_trace("x", content).events))
    try:
        got, _, notes = scanned(path, data.draw(st.sampled_from([200, 5000])))
    except traceio.TraceFormatError as exc:
        assert str(path) in str(exc)
        return
    assert not Counter(map(repr, got)) - truth
    if notes:
        assert "cut short" in notes[0] and str(path) in notes[0]


# Damage that looks like wire data: continuation bytes (overlong varints), tags sched-trace writes.
WIRE_BYTES = st.lists(st.sampled_from([0x00, 0x01, 0x0A, 0x22, 0x48, 0x58, 0x7F, 0x80, 0xB2, 0xBA, 0xF9, 0xFF]),
                      min_size=1, max_size=64).map(bytes)


@QUICK
@given(st.binary(min_size=1, max_size=600) | WIRE_BYTES, st.integers(0, 4000))
@example(garbage=b"\x00\x00\x00\x00\x00\x80\x80\x80", position=2387)  # CI: a tag read as 11 bytes, then IndexError
def test_damaged_bytes_give_only_the_projects_errors(tmp_path_factory, garbage, position):
    path = written(tmp_path_factory.mktemp("bad"), samples.sample_events())
    content = path.read_bytes()
    position %= len(content)
    path.write_bytes(content[:position] + garbage + content[position + len(garbage):])
    for small in (0, 1 << 30):  # streamed (own errors), and whole (the protobuf reader's)
        try:
            scanned(path, 256, small)
        except SchedTraceError as exc:
            assert str(path) in str(exc)


def test_wire_reads_at_any_position_past_the_end_read_zeros_and_never_index_out():
    buf = WireBuffer.from_bytes(b"\x96\x01" + b"\xff" * 12)
    value, after = buf.varint(np.array([0, buf.size, buf.size + 40, 1 << 60]))
    assert value.tolist() == [150, 0, 0, 0] and after.tolist() == [2, buf.size + 1, buf.size + 41, (1 << 60) + 1]
    assert buf.byte(np.array([1, 1 << 62])).tolist() == [1, 0] and buf.word(np.array([1 << 62])).tolist() == [0]
    assert buf.varint(np.array([2]))[1][0] > buf.size  # 11 bytes and more: no varint, a position far past the end
    # An overlong tag, then a fixed or varint payload read where the tag would end: the message is bad.
    for payload in (b"", b"\x01", b"\x05"):
        data = b"\x80" * 10 + payload + b"\x00" * 3
        fields = scan_fields(WireBuffer.from_bytes(data), np.array([0]), np.array([len(data)]),
                             field_table({1: (0, 0)}), 1)
        assert fields.bad.tolist() == [True]


def test_a_small_file_the_column_reader_does_not_decode_goes_to_the_protobuf_reader(tmp_path):
    pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    trace = pb.Trace()
    packet = trace.packet.add()
    packet.timestamp, packet.track_event.type, packet.track_event.name_iid = 10, 1, 3  # an interned name
    packet = trace.packet.add()
    packet.timestamp, packet.track_event.type = 20, 2
    path = tmp_path / "interned.perfetto-trace"
    path.write_bytes(trace.SerializeToString())
    reference = traceio.read_trace(path)
    got, _, _ = scanned(path, 1 << 20, small=1 << 20)
    assert [repr(e) for e in got] == [repr(e) for e in reference.events] and len(got) == 1
    with pytest.raises(traceio.TraceFormatError, match="interned"):
        scanned(path, 1 << 20, small=0)
