"""Track events read in the shape sched-trace writes them, the field scanner for any other.

sched-trace's encoder (``_protowire.slice_packets``) writes a slice BEGIN as its
debug annotations, then ``type``, ``track_uuid``, one category, the name and maybe a
flow id, always in that order; an END as ``type`` and ``track_uuid`` alone. Read in
that order with a handful of vector operations per field, these need none of the
scanner's general machinery (tag look-ups, wire types, a scatter per field). A
track event of any other shape (another writer's, counters, instants) is handed to
:func:`~._pbscan.scan_fields` with the same result.
"""

from __future__ import annotations

import numpy as np

from ._pbscan import LENGTH, VARINT, Fields, WireBuffer, field_table, scan_fields

# TrackEvent fields: type 9, track_uuid 11, name 23, name_iid 10, category_iids 3 (packed or not);
# repeated debug_annotations 4 and categories 22.
EVENT = field_table({9: (0, VARINT), 11: (1, VARINT), 23: (2, LENGTH), 10: (3, VARINT), 3: (4, VARINT)},
                    repeated=(4, 22))
EVENT[(3 << 3) | LENGTH] = 4  # category_iids, packed
SLOTS = 5
_ANNOTATION_TAG, _TYPE_TAG, _UUID_TAG = 0x22, 0x48, 0x58
_CATEGORY_TAG, _NAME_TAG, _FLOW_TAG = (0xB2, 0x01), (0xBA, 0x01), (0xF9, 0x02)


# long: one vectorised pass over the known track event fields, each a few numpy lines
def scan_track_events(buf: WireBuffer, starts: np.ndarray, ends: np.ndarray) -> Fields:
    """What ``scan_fields(buf, starts, ends, EVENT, SLOTS, repeated=(4, 22))`` gives, faster."""
    count = starts.size
    value = np.zeros((SLOTS, count), np.uint64)
    start = np.zeros((SLOTS, count), np.int64)
    end = np.zeros((SLOTS, count), np.int64)
    annotations: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pos = starts.astype(np.int64, copy=True)
    active = np.flatnonzero(pos < ends)
    while active.size:  # the debug annotations: 0x22, a length, the bytes
        at = pos[active]
        active = active[buf.byte(at) == _ANNOTATION_TAG]
        if not active.size:
            break
        length, body = buf.varint(pos[active] + 1)
        stop = body + np.minimum(length, np.uint64(1 << 40)).view(np.int64)
        fits = stop <= ends[active]
        annotations.append((active[fits], body[fits], stop[fits]))
        pos[active[fits]] = stop[fits]
        pos[active[~fits]] = -1  # runs past its message: the scanner will say so
        active = active[fits]
    ok = pos >= 0
    at = np.maximum(pos, 0)
    ok &= (buf.byte(at) == _TYPE_TAG) & (buf.byte(at + 1) < 0x80) & (buf.byte(at + 2) == _UUID_TAG)
    value[0] = buf.byte(at + 1)
    uuid, at = buf.varint(at + 3)
    value[1] = uuid
    ends_here = ok & (at == ends)
    begin = ok & ~ends_here & (value[0] == 1)
    ok &= ends_here | begin
    rows = np.flatnonzero(begin)
    categories = _string_field(buf, at[rows], ends[rows], _CATEGORY_TAG)
    names = _string_field(buf, categories[2], ends[rows], _NAME_TAG)
    at = names[2]
    flow = (buf.byte(at) == _FLOW_TAG[0]) & (buf.byte(at + 1) == _FLOW_TAG[1]) & (at + 10 <= ends[rows])
    at = np.where(flow, at + 10, at)
    conforming = categories[0] & names[0] & (at == ends[rows])
    ok[rows[~conforming]] = False
    rows, categories, names = rows[conforming], [c[conforming] for c in categories], [n[conforming] for n in names]
    start[2][rows], end[2][rows] = names[1], names[2]
    result_annotations = [(r[ok[r]], b[ok[r]], e[ok[r]]) for r, b, e in annotations]
    result_categories = [(rows, categories[1], categories[2])]
    other = np.flatnonzero(~ok)
    bad = np.zeros(count, bool)
    if other.size:  # another writer's shape: the general scanner, merged in
        fields = scan_fields(buf, starts[other], ends[other], EVENT, SLOTS, repeated=(4, 22))
        value[:, other], start[:, other], end[:, other] = fields.value, fields.start, fields.end
        bad[other] = fields.bad
        for found, collected in ((fields.repeated[4], result_annotations), (fields.repeated[22], result_categories)):
            collected.append((other[found[0]], found[1], found[2]))
    start[0][ok], start[1][ok] = 1, 1  # present (a start past 0 says so)
    return Fields(value, start, end, {4: _joined(result_annotations), 22: _joined(result_categories)}, bad)


def _string_field(buf: WireBuffer, here: np.ndarray, ends: np.ndarray, tag: tuple[int, int]) -> list[np.ndarray]:
    """[matches, payload start, payload end] of a string field with a two-byte tag at ``here``
    (a length under 128: names and categories are short)."""
    length = buf.byte(here + 2).astype(np.int64)
    matches = (buf.byte(here) == tag[0]) & (buf.byte(here + 1) == tag[1]) & (length < 0x80)
    stop = here + 3 + length
    matches &= stop <= ends
    return [matches, here + 3, np.where(matches, stop, here)]


def _joined(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]
