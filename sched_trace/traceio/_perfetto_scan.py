"""Perfetto traces read as columns, a chunk at a time (see ``_perfetto`` for the layout).

:class:`PerfettoScan` reads a file in chunks of ``chunk_bytes`` and yields one
:class:`~sched_trace.traceio._columns.SliceTable` per chunk, decoding packets,
track events and debug annotations with the vector scanner of ``_pbscan``: memory
is bounded by the chunk, not by the file. It gives the same slices as the
protobuf reader (``_perfetto_read``), which stays the reference: a file up to
``SMALL_FILE_BYTES`` that holds anything unusual (interned names, a slice ending
before it starts, damaged bytes) is handed to it whole, so its error says what
and where; a larger file raises :class:`TraceFormatError` from here.

Slices whose BEGIN and END fall in different chunks (an outer slice around many
inner ones) are paired across chunks: the open BEGIN packets are carried into the
next chunk.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Iterator

import numpy as np

from .._errors import SchedTraceWarning
from ._checks import hashable
from ._columns import Catalog, SliceTable
from ._model import ProcessKey, RANK_KEYS_ARG, TraceFile, TraceFormatError
from ._pbscan import (
    KEY_BYTES, LENGTH, VARINT, Unsupported, WireBuffer, _parsed, as_int64, field_table, group_rows, match_keys,
    packet_spans, scan_fields, short_keys, string_keys,
)
from ._perfetto import MONOTONIC, REALTIME, SLICE_BEGIN, SLICE_END, protos
from ._perfetto_args import Args
from ._perfetto_read import _read_descriptor, _track_rank, read_perfetto
from ._track_events import scan_track_events

CHUNK_BYTES = 4 << 20
#: Files up to this size are read whole first, so anything unusual can go to the protobuf reader.
SMALL_FILE_BYTES = 64 << 20
_MAX_OPEN = 100_000  # BEGIN packets waiting for their END: more means the file is not slices

# TracePacket fields: timestamp 8, track_event 11, clock_snapshot 6, track_descriptor 60.
_PACKET = field_table({8: (0, VARINT), 11: (1, LENGTH), 6: (2, LENGTH), 60: (3, LENGTH)})


class PerfettoScan:
    """Iterate a Perfetto file's slices as tables; ``clock_offsets`` is complete once iterated."""

    def __init__(self, path: str, catalog: Catalog, chunk_bytes: int = CHUNK_BYTES,
                 small_file_bytes: int = SMALL_FILE_BYTES) -> None:
        self.path = path
        self.catalog = catalog
        self.chunk_bytes = chunk_bytes
        self.small = os.path.getsize(path) <= small_file_bytes
        self.clock_offsets: dict[ProcessKey, int] = {}
        self.processes: set[ProcessKey] = set()
        self.bytes_read = 0  # of the file, once its tables so far were handed out

    def __iter__(self) -> Iterator[SliceTable]:
        if not self.small:
            try:
                yield from _Decoder(self).chunks()
            except Unsupported as exc:
                raise TraceFormatError(exc.detail, path=self.path, where=exc.where) from None
            return
        decoder = _Decoder(self)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SchedTraceWarning)
                tables = list(decoder.chunks())
        except Unsupported:
            yield from self._by_protobuf()
            return
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        yield from tables

    def _by_protobuf(self) -> Iterator[SliceTable]:
        """The reference reader, for a small file this one does not decode."""
        with open(self.path, "rb") as handle:
            trace: TraceFile = read_perfetto(self.path, handle.read())
        self.clock_offsets = dict(trace.clock_offsets)
        self.processes = set(trace.processes())
        yield SliceTable.from_events(trace.events, self.catalog)


_BATCH = string_keys([b"batch"])


class _Decoder:
    """The state of one file's read: tracks, processes, open slices, clock snapshots."""

    def __init__(self, scan: PerfettoScan) -> None:
        self.scan = scan
        self.path = scan.path
        self.tracks: dict[int, Any] = {}
        self.described: dict[int, bytes] = {}  # each track's descriptor as written
        self.processes: dict[int, ProcessKey] = {}
        self.reference = TraceFile(path=scan.path, format="perfetto")  # what _read_descriptor fills in
        self.snapshot_offsets: list[int] = []
        self.ranks: dict[tuple[int, int], int] = {}  # (track uuid, rank_keys index) -> catalog rank id
        self.resolved: set[int] = set()  # track and process uuids a slice's rank was looked up on
        self.values: dict[bytes, Any] = {}  # decoded complex annotations, by their bytes
        self.rank_keys: list[dict] = []
        self.rank_key_index: dict[bytes, int] = {}
        self.packets = 0  # complete packets read so far
        self.carried = 0  # open BEGIN packets put back in front of the current chunk

    def chunks(self) -> Iterator[SliceTable]:
        keep = np.zeros(0, np.uint8)
        open_bytes = 0
        with open(self.path, "rb") as handle:
            while True:
                buf = WireBuffer.read(handle, self.scan.chunk_bytes, keep)
                final = buf.size - keep.size < self.scan.chunk_bytes
                spans = packet_spans(buf, final)
                if spans.broken_at is not None:
                    raise Unsupported(f"not a Perfetto protobuf trace, or corrupt after {self.packets} complete "
                                      "packets", f"packet {self.packets + 1}")
                table, open_packets, open_count = self._decode(buf, spans)
                self.packets += spans.body_start.size - self.carried
                self.carried = open_count
                self.scan.bytes_read = handle.tell()
                if len(table):
                    yield table
                rest = buf.u8[spans.complete_end:buf.size]
                keep = np.concatenate([open_packets, rest])
                open_bytes = open_packets.size
                if final:
                    break
        self._finish(keep.size - open_bytes)

    def _finish(self, tail: int) -> None:
        if tail:
            warnings.warn(SchedTraceWarning(
                f"{self.path}: cut short: read {self.packets} complete packets, dropped the last {tail} bytes "
                "(an incomplete packet; was the writer killed?)"), stacklevel=5)
        offsets = self.reference.clock_offsets
        ranks = self.scan.catalog.ranks
        processes = set(offsets) | {(ranks[i].host_id, ranks[i].pid) for i in self.ranks.values()}
        if self.snapshot_offsets and not offsets:
            offsets = {key: self.snapshot_offsets[0] for key in processes}
        self.scan.clock_offsets = dict(offsets)
        self.scan.processes = processes

    # --- one chunk ---------------------------------------------------------------------------

    def _decode(self, buf: WireBuffer, spans: Any) -> tuple[SliceTable, np.ndarray, int]:
        packets = scan_fields(buf, spans.body_start, spans.body_end, _PACKET, 4)
        if packets.bad.any():
            raise Unsupported("a packet is not valid protobuf", self._where(int(np.argmax(packets.bad))))
        is_event = packets.has(1) & ~packets.has(2) & ~packets.has(3)
        rows = np.flatnonzero(is_event)
        events = scan_track_events(buf, packets.start[1][rows], packets.end[1][rows])
        if events.bad.any():
            raise Unsupported("a track event is not valid protobuf", self._where(rows[np.argmax(events.bad)]))
        kind = events.value[0]
        slices = np.flatnonzero((kind == SLICE_BEGIN) | (kind == SLICE_END))
        ends = slices[kind[slices] == SLICE_END]
        tracks, first = np.unique(events.value[1][ends], return_index=True)
        self._metadata(buf, packets, dict(zip(tracks.tolist(), rows[ends[first]].tolist())))
        if events.has(3)[slices].any() or events.has(4)[slices].any():
            raise Unsupported("interned event names or categories (name_iid) are not read",
                              self._where(rows[slices[0]]))
        begin, end, still_open = _pair(kind[slices] == SLICE_BEGIN, events.value[1][slices])
        if still_open.size > _MAX_OPEN:
            raise Unsupported(f"{still_open.size} slices begin and never end", self._where(rows[slices[0]]))
        open_rows = rows[slices[still_open]]
        open_packets = _packet_bytes(buf, spans.body_start[open_rows], spans.body_end[open_rows])
        table = self._slices(buf, packets, events, rows, slices[begin], slices[end])
        return table, open_packets, int(open_rows.size)

    def _metadata(self, buf: WireBuffer, packets: Any, first_end: dict[int, int]) -> None:
        """Track descriptors and clock snapshots, in packet order (a few per file).

        ``first_end`` maps a track to the packet of its first slice END in this chunk: a
        descriptor that comes later than a slice it names is left to the protobuf reader.
        """
        pb = protos()
        for row in np.flatnonzero(packets.has(2) | packets.has(3)):
            where = self._where(row)
            if packets.has(3)[row]:
                data = buf.bytes_at(packets.start[3][row], packets.end[3][row])
                descriptor = _parsed(pb.TrackDescriptor, data, where)
                if self.described.get(descriptor.uuid) == data:
                    continue  # the same track described again (files appended to one another)
                self.described[descriptor.uuid] = data
                children = [u for u, t in self.tracks.items() if t.parent_uuid == descriptor.uuid] if \
                    descriptor.uuid not in self.tracks else []
                named = [first_end.get(u, row) for u in [descriptor.uuid, *children]]
                if descriptor.uuid in self.resolved or min(named) < row:
                    raise Unsupported("a track is described after slices on it", where)
                try:
                    _read_descriptor(descriptor, self.tracks, self.processes, self.reference)
                except TraceFormatError as exc:
                    raise Unsupported(exc.detail, where) from None
            else:
                snapshot = _parsed(pb.ClockSnapshot, buf.bytes_at(packets.start[2][row], packets.end[2][row]), where)
                clocks = {c.clock_id: c.timestamp for c in snapshot.clocks}
                if REALTIME in clocks and MONOTONIC in clocks:
                    self.snapshot_offsets.append(clocks[REALTIME] - clocks[MONOTONIC])

    def _where(self, row: int) -> str:
        return f"packet {self.packets + int(row) - self.carried}"

    def _slices(self, buf: WireBuffer, packets: Any, events: Any, rows: np.ndarray,
                begin: np.ndarray, end: np.ndarray) -> SliceTable:
        """Columns of the paired slices (``begin``/``end``: indices into the track events)."""
        catalog = self.scan.catalog
        count = begin.size
        start_ns = as_int64(packets.value[0][rows[begin]])
        end_ns = as_int64(packets.value[0][rows[end]])
        if (packets.value[0][rows[begin]] > np.uint64((1 << 63) - 1)).any() or \
                (packets.value[0][rows[end]] > np.uint64((1 << 63) - 1)).any():
            raise Unsupported("a timestamp is out of the int64 range", self._where(rows[begin[0]]))
        if (end_ns < start_ns).any():
            raise Unsupported("a slice ends before it starts", self._where(rows[end[np.argmax(end_ns < start_ns)]]))
        name_start = np.where(events.has(2)[begin], events.start[2][begin], 0)
        name_end = np.where(events.has(2)[begin], events.end[2][begin], 0)
        names = self._strings(buf, name_start, name_end)
        table = SliceTable(
            catalog, start_ns=start_ns.copy(), end_ns=end_ns.copy(),
            is_batch=self._is_batch(buf, events, begin), name=names,
            rank=np.zeros(count, np.int32), microbatch=np.zeros(count, np.int64),
            microbatch_kind=np.zeros(count, np.int8), batch_id=np.zeros(count, np.int64),
            has_batch_id=np.zeros(count, bool), batch_size=np.zeros(count, np.int64),
            has_batch_size=np.zeros(count, bool), level=np.zeros(count, np.int64),
            span_id=np.zeros(count, np.uint64), parent_id=np.zeros(count, np.uint64),
            attrs=np.full(count, -1, np.int32), error=np.full(count, -1, np.int32), objects=[])
        rank_keys = Args(self, buf, events.repeated[4], events.messages, begin).fill(table)
        table.rank = self._ranks(events.value[1][end], rank_keys)
        return table

    def _strings(self, buf: WireBuffer, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Catalog name ids of byte strings (slice names): each distinct one decoded once."""
        if not start.size:
            return np.zeros(0, np.int32)
        keys = short_keys(buf, start, end)
        long = np.flatnonzero(keys[0] > KEY_BYTES)
        if long.size:  # longer names: each row its own key, decoded on its own
            keys[0] = keys[0].copy()
            keys[0][long] = -1 - long
        rows, inverse = group_rows(keys)
        decoded = np.array([self.scan.catalog.name_id(self._utf8(buf.bytes_at(start[row], end[row])))
                            for row in rows.tolist()], np.int32)
        return decoded[inverse]

    def _utf8(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unsupported(f"a string field is not UTF-8 ({exc.reason})") from None

    def _is_batch(self, buf: WireBuffer, events: Any, begin: np.ndarray) -> np.ndarray:
        """A slice is a batch when one of its categories is ``batch``."""
        owner, start, end = events.repeated[22]
        flagged = np.zeros(events.messages, bool)
        if owner.size:
            batch = match_keys(_BATCH, short_keys(buf, start, np.minimum(end, start + 8), words=1)) == 0
            flagged[owner[batch & (end - start == 5)]] = True
        return flagged[begin]

    def _ranks(self, uuids: np.ndarray, rank_keys: np.ndarray) -> np.ndarray:
        """Catalog rank ids: each (track, rank_keys) pair resolved once, at its first slice."""
        if not uuids.size:
            return np.zeros(0, np.int32)
        rows, inverse = group_rows([uuids, rank_keys])
        decoded = np.empty(rows.size, np.int32)
        for index, (uuid, keys) in enumerate(zip(uuids[rows].tolist(), rank_keys[rows].tolist())):
            found = self.ranks.get((uuid, keys))
            if found is None:
                found = self.ranks[(uuid, keys)] = self.scan.catalog.rank_id(self._rank(uuid, keys))
            decoded[index] = found
        return decoded[inverse]

    def _rank(self, uuid: int, keys: int) -> Any:
        self.resolved.add(uuid)
        track = self.tracks.get(uuid)
        if track is not None:
            self.resolved.add(track.parent_uuid)
        try:
            rank = _track_rank(uuid, self.tracks, self.processes)
        except TraceFormatError as exc:
            raise Unsupported(exc.detail) from None
        if keys >= 0:  # extra rank keys the track does not stand for
            rank = dataclasses.replace(rank, extra=tuple(sorted({**rank.extras, **self.rank_keys[keys]}.items())))
        return rank

    def rank_keys_index(self, value: Any) -> int:
        """An index for a slice's ``rank_keys`` argument (-1: none to merge)."""
        if not isinstance(value, dict):
            raise Unsupported(f"{RANK_KEYS_ARG} must be an object, got {type(value).__name__}")
        try:
            keys = {str(key): hashable(item) for key, item in value.items()}
        except TraceFormatError as exc:
            raise Unsupported(exc.detail) from None
        if not keys:
            return -1
        encoded = repr(sorted(keys.items())).encode()
        found = self.rank_key_index.get(encoded)
        if found is None:
            found = self.rank_key_index[encoded] = len(self.rank_keys)
            self.rank_keys.append(keys)
        return found


def _pair(is_begin: np.ndarray, uuid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each END with the latest open BEGIN on its track: (begin indices, end indices, open BEGINs).

    sched-trace writes each slice as a BEGIN and END pair; other writers nest and
    interleave, and an END with nothing open is ignored, as the protobuf reader does.
    """
    count = is_begin.size
    index = np.arange(count)
    if count % 2 == 0 and is_begin[0::2].all() and not is_begin[1::2].any() and (uuid[0::2] == uuid[1::2]).all():
        return index[0::2], index[1::2], index[:0]
    begins, ends = [], []
    stacks: dict[int, list[int]] = {}
    for position, (opens, track) in enumerate(zip(is_begin.tolist(), uuid.tolist())):
        if opens:
            stacks.setdefault(track, []).append(position)
        elif stacks.get(track):
            begins.append(stacks[track].pop())
            ends.append(position)
    still_open = sorted(position for stack in stacks.values() for position in stack)
    return (np.asarray(begins, np.int64), np.asarray(ends, np.int64), np.asarray(still_open, np.int64))


def _packet_bytes(buf: WireBuffer, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The given packets again as ``Trace.packet`` fields (tag, length, body), in order."""
    if not start.size:
        return np.zeros(0, np.uint8)
    parts = []
    for first, last in zip(start.tolist(), end.tolist()):
        size, header = last - first, [0x0A]
        while size >= 0x80:
            header.append((size & 0x7F) | 0x80)
            size >>= 7
        header.append(size)
        parts.extend([np.array(header, np.uint8), buf.u8[first:last]])
    return np.concatenate(parts)
