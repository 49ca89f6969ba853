"""A Perfetto file copied into a merged one: packets kept as written, clocks moved.

``merge`` of Perfetto files into Perfetto need not decode and re-encode every
slice: each packet is copied as it is, with three changes. Its timestamp moves by
its process's clock shift (a varint rewritten in place, with vector operations,
when its length stays the same, which it does for epoch nanoseconds); each
process's descriptor says the clock offset that now holds and gets a pid no other
host's process has; and the file's own clock snapshots are dropped (they would
contradict one another), as is a descriptor another file already gave.

Packets keep their sequence ids: each writing process had its own, so chunks from
many files never mix their state.
"""

from __future__ import annotations

import json
from typing import BinaryIO, Callable, Mapping, Optional

import numpy as np

from ._model import ProcessKey
from ._pbscan import LENGTH, VARINT, WireBuffer, field_table, packet_spans, scan_fields
from ._perfetto import INT32_LIMIT, protos
from ._pbscan import Unsupported, _parsed
from ._perfetto_scan import CHUNK_BYTES

_PACKET = field_table({8: (0, VARINT), 11: (1, LENGTH), 6: (2, LENGTH), 60: (3, LENGTH)})
_TRACK = field_table({11: (0, VARINT)})  # TrackEvent.track_uuid


class ProcessIds:
    """The pid each process gets in the merged file: its own, unless another host's process has it."""

    def __init__(self) -> None:
        self.assigned: dict[ProcessKey, int] = {}

    def pid(self, key: ProcessKey) -> int:
        found = self.assigned.get(key)
        if found is None:
            found = key[1] % INT32_LIMIT
            used = set(self.assigned.values())
            while found in used:
                found = (found + (1 << 22)) % INT32_LIMIT
            self.assigned[key] = found
        return found


class PassThrough:
    """Copies Perfetto files into one output; see the module docstring."""

    def __init__(self, output: BinaryIO, shifts: Mapping[ProcessKey, int], offsets: Mapping[ProcessKey, int],
                 pids: ProcessIds, alignment: Optional[Mapping[str, dict]] = None) -> None:
        self.output = output
        self.shifts = dict(shifts)
        self.offsets = dict(offsets)
        self.pids = pids
        self.alignment = alignment or {}
        self.described: set[int] = set()  # track uuids already in the output

    def copy(self, path: str, progress: Optional[Callable[[int], None]] = None) -> None:
        """Every packet of ``path`` into the output (``progress(bytes)`` after each chunk)."""
        tracks: dict[int, ProcessKey] = {}  # track uuid -> its process, from the descriptors
        keep = np.zeros(0, np.uint8)
        with open(path, "rb") as handle:
            while True:
                buf = WireBuffer.read(handle, CHUNK_BYTES, keep)
                final = buf.size - keep.size < CHUNK_BYTES
                spans = packet_spans(buf, final)
                if spans.broken_at is not None:
                    raise Unsupported("not a Perfetto protobuf trace, or corrupt")
                self._chunk(buf, spans, tracks)
                if progress is not None:
                    progress(spans.complete_end)
                keep = buf.u8[spans.complete_end:buf.size].copy()
                if final:
                    break  # a cut-short tail was reported when the file was read; it is left out

    def _chunk(self, buf: WireBuffer, spans: object, tracks: dict[int, ProcessKey]) -> None:
        fields = scan_fields(buf, spans.body_start, spans.body_end, _PACKET, 4)  # type: ignore[attr-defined]
        if fields.bad.any():
            raise Unsupported("a packet is not valid protobuf")
        count = spans.body_start.size  # type: ignore[attr-defined]
        drop = fields.has(2).copy()  # clock snapshots
        replaced: dict[int, bytes] = {}
        for row in np.flatnonzero(fields.has(3)).tolist():
            body = buf.bytes_at(int(spans.body_start[row]), int(spans.body_end[row]))  # type: ignore[attr-defined]
            new = self._descriptor(body, tracks)
            if new is None:
                drop[row] = True
            elif new != body:
                replaced[row] = new
        timed = np.flatnonzero(fields.has(0) & fields.has(1))
        shift = self._packet_shifts(buf, fields, timed, tracks)
        moved = timed[shift != 0]
        if moved.size:
            self._move(buf, fields, spans, moved, shift[shift != 0], replaced)
        self._write(buf, spans, count, drop, replaced)

    def _descriptor(self, body: bytes, tracks: dict[int, ProcessKey]) -> Optional[bytes]:
        """The packet of a track descriptor as the merged file has it (None: already there)."""
        packet = _parsed(protos().TracePacket, body)
        descriptor = packet.track_descriptor
        meta = _meta(descriptor.description)
        if meta is not None:
            key = (str(meta.get("host_id", "unknown")), int(meta.get("pid", 0)))
            tracks[descriptor.uuid] = key
        elif descriptor.parent_uuid in tracks:
            tracks[descriptor.uuid] = tracks[descriptor.parent_uuid]
        if descriptor.uuid in self.described:
            return None
        self.described.add(descriptor.uuid)
        if meta is None:
            return body
        key = tracks[descriptor.uuid]
        if key in self.offsets:
            meta["clock_offset_ns"] = self.offsets[key]
        if self.alignment.get(key[0]):
            meta["clock_alignment"] = self.alignment[key[0]]
        descriptor.description = json.dumps({"sched_trace_process": meta})
        if descriptor.HasField("process"):
            descriptor.process.pid = self.pids.pid(key)
        return packet.SerializeToString()

    def _packet_shifts(self, buf: WireBuffer, fields: object, rows: np.ndarray,
                       tracks: Mapping[int, ProcessKey]) -> np.ndarray:
        """The shift of each timed packet: its track's process's (one shift for the file: no decoding)."""
        shifts = {self.shifts.get(key, 0) for key in tracks.values()}
        if len(shifts) <= 1:
            return np.full(rows.size, next(iter(shifts), 0), np.int64)
        found = scan_fields(buf, fields.start[1][rows], fields.end[1][rows], _TRACK, 1)  # type: ignore[attr-defined]
        by_track = {uuid: self.shifts.get(key, 0) for uuid, key in tracks.items()}
        uuids = found.value[0]
        result = np.zeros(rows.size, np.int64)
        for uuid in np.unique(uuids).tolist():
            result[uuids == uuid] = by_track.get(uuid, 0)
        return result

    def _move(self, buf: WireBuffer, fields: object, spans: object, rows: np.ndarray, shift: np.ndarray,
              replaced: dict[int, bytes]) -> None:
        """New timestamps: rewritten in place where the varint keeps its length, else the packet rebuilt."""
        new = (fields.value[0][rows].view(np.int64) + shift).view(np.uint64)  # type: ignore[attr-defined]
        start = fields.start[0][rows]  # type: ignore[attr-defined]
        length = fields.end[0][rows] - start  # type: ignore[attr-defined]
        same = _varint_length(new) == length
        for k in range(10):
            at = same & (length > k)
            if not at.any():
                break
            byte = ((new[at] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
            byte |= np.where(length[at] > k + 1, 0x80, 0).astype(np.uint8)
            buf.u8[start[at] + k] = byte
        for i in np.flatnonzero(~same).tolist():
            row = int(rows[i])
            body = buf.bytes_at(int(spans.body_start[row]), int(spans.body_end[row]))  # type: ignore[attr-defined]
            packet = _parsed(protos().TracePacket, body)
            packet.timestamp = int(new[i])
            replaced[row] = packet.SerializeToString()

    def _write(self, buf: WireBuffer, spans: object, count: int, drop: np.ndarray,
               replaced: dict[int, bytes]) -> None:
        starts = spans.body_start  # type: ignore[attr-defined]
        ends = spans.body_end  # type: ignore[attr-defined]
        heads = starts - 1 - _varint_length((ends - starts).astype(np.uint64))  # the tag byte of each packet
        special = sorted(set(np.flatnonzero(drop).tolist()) | set(replaced))
        position = 0
        for row in special:
            if row > position:
                self.output.write(buf.u8[heads[position]:ends[row - 1]].tobytes())
            if row in replaced and not drop[row]:
                self.output.write(_packet(replaced[row]))
            position = row + 1
        if position < count:
            self.output.write(buf.u8[heads[position]:ends[count - 1]].tobytes())


def _meta(description: str) -> Optional[dict]:
    if not description.startswith("{"):
        return None
    try:
        found = json.loads(description)
    except ValueError:
        return None
    meta = found.get("sched_trace_process") if isinstance(found, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def _varint_length(values: np.ndarray) -> np.ndarray:
    length = np.ones(values.size, np.int64)
    for k in range(1, 10):
        length += values >= np.uint64(1 << (7 * k))
    return length


def _packet(body: bytes) -> bytes:
    size, header = len(body), bytearray([0x0A])
    while size >= 0x80:
        header.append((size & 0x7F) | 0x80)
        size >>= 7
    header.append(size)
    return bytes(header) + body
