"""The debug annotations of slice BEGIN packets into a table's columns, many at once.

The annotations sched-trace writes are a name and an int (micro-batch, batch id,
size, level, span ids) or a dict (attrs, rank keys). Names are matched by their
bytes, ints taken as decoded by the scanner; any other value (a string, a dict, a
float) is decoded by protobuf once per distinct byte string and shared by every
slice that carries it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import _json_text, to_int
from ._columns import INT_MICROBATCH, NO_MICROBATCH, OBJECT_MICROBATCH, SliceTable
from ._model import RANK_KEYS_ARG, TraceFormatError
from ._pbscan import (
    FIXED64, LENGTH, VARINT, Unsupported, WireBuffer, _parsed, as_int64, field_table, group_rows, match_keys,
    scan_fields, short_keys, string_keys,
)
from ._perfetto import protos
from ._perfetto_read import get_annotation

# DebugAnnotation: name 10 and int_value 4 are read here; any other value (bool 2, uint 3, double 5,
# string 6, pointer 7, nested 8, legacy_json 9, string_iid 17, proto_value 14, dict_entries 11,
# array_values 12) sends the annotation to protobuf (slot 2 notes that one is there); name_iid 1
# (slot 3) is not read at all.
_OTHER = 2
_ANNOTATION = field_table({10: (0, LENGTH), 4: (1, VARINT), 2: (_OTHER, VARINT), 3: (_OTHER, VARINT),
                           5: (_OTHER, FIXED64), 6: (_OTHER, LENGTH), 7: (_OTHER, VARINT), 8: (_OTHER, LENGTH),
                           9: (_OTHER, LENGTH), 17: (_OTHER, VARINT), 14: (_OTHER, LENGTH), 11: (_OTHER, LENGTH),
                           12: (_OTHER, LENGTH), 16: (_OTHER, LENGTH), 13: (_OTHER, VARINT), 1: (3, VARINT)})
ARGS = ("microbatch", "batch_id", "batch_size", "level", "span_id", "parent_id", "error", "attrs", RANK_KEYS_ARG)


_NAME, _INT = 0, 1
ARGS = ("microbatch", "batch_id", "batch_size", "level", "span_id", "parent_id", "error", "attrs", RANK_KEYS_ARG)
_ARG_KEYS = string_keys([name.encode() for name in ARGS])
_INT_ARGS = frozenset(("microbatch", "batch_id", "batch_size", "level", "span_id", "parent_id"))


class Args:
    """Debug annotations of the BEGIN packets into the table's columns."""

    def __init__(self, decoder: Any, buf: WireBuffer, annotations: tuple, events: int,
                 begin: np.ndarray) -> None:
        self.decoder, self.buf = decoder, buf
        owner, start, end = annotations
        slice_of = np.full(events, -1, np.int64)
        slice_of[begin] = np.arange(begin.size)
        row = slice_of[owner]
        wanted = row >= 0
        self.row, self.start, self.end = row[wanted], start[wanted], end[wanted]
        self.count = begin.size

    def fill(self, table: SliceTable) -> np.ndarray:
        """Write the columns; returns each slice's rank_keys index (-1: none)."""
        rank_keys = np.full(self.count, -1, np.int64)
        if not self.row.size:
            return rank_keys
        buf = self.buf
        value, name_start, name_end, plain_int = self._read(buf)
        named = name_end > name_start
        keys = short_keys(buf, name_start, np.where(named, np.minimum(name_end, name_start + 16), name_start), words=2)
        keys[0] = np.where(named, name_end - name_start, -1)
        arg = match_keys(_ARG_KEYS, keys)
        for index, name in enumerate(ARGS):
            hits = np.flatnonzero(arg == index)
            if not hits.size:
                continue
            plain = plain_int[hits] if name in _INT_ARGS else np.zeros(hits.size, bool)
            ints = hits[plain]
            if ints.size:
                self._ints(table, name, ints, as_int64(value[ints]))
            others = hits[~plain]
            if others.size:
                self._others(table, name, others, rank_keys)
        return rank_keys

    def _read(self, buf: WireBuffer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each annotation's int value, name span, and whether it is a plain int (else: decoded later).

        sched-trace writes an int as ``int_value`` then ``name`` and nothing else: that shape
        is read directly; any other goes through the field scanner.
        """
        start, end = self.start, self.end
        value, after = buf.varint(start + 1)
        name_length = buf.byte(after + 1).astype(np.int64)
        plain = ((buf.byte(start) == 0x20) & (end > start) & (buf.byte(after) == 0x52) & (name_length < 0x80)
                 & (after + 2 + name_length == end))
        name_start, name_end = np.where(plain, after + 2, 0), np.where(plain, end, 0)
        rest = np.flatnonzero(~plain)
        if rest.size:
            fields = scan_fields(buf, start[rest], end[rest], _ANNOTATION, 4)
            if fields.bad.any():
                raise Unsupported("a debug annotation is not valid protobuf")
            if fields.has(3).any():
                raise Unsupported("interned debug annotation names (name_iid) are not read")
            named = fields.has(_NAME)
            name_start[rest] = np.where(named, fields.start[_NAME], 0)
            name_end[rest] = np.where(named, fields.end[_NAME], 0)
            value[rest] = fields.value[_INT]
            plain[rest] = fields.has(_INT) & ~fields.has(_OTHER)
        return value, name_start, name_end, plain

    def _others(self, table: SliceTable, name: str, hits: np.ndarray, rank_keys: np.ndarray) -> None:
        """Annotations that are not plain ints (strings, dicts ...): each distinct one decoded once."""
        start, end = self.start[hits], self.end[hits]
        keys = short_keys(self.buf, start, np.minimum(end, start + 64), words=8)
        long = np.flatnonzero(end - start > 64)
        if long.size:
            keys[0] = keys[0].copy()
            keys[0][long] = -1 - long
        representatives, inverse = group_rows(keys)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(representatives.size + 1))
        for group, first in enumerate(representatives.tolist()):
            rows = self.row[hits[order[bounds[group]:bounds[group + 1]]]]
            value = self._value(int(start[first]), int(end[first]))
            self._other(table, name, rows, value, rank_keys)

    def _ints(self, table: SliceTable, name: str, hits: np.ndarray, values: np.ndarray) -> None:
        rows = self.row[hits]
        if name == "microbatch":
            table.microbatch[rows] = values
            table.microbatch_kind[rows] = INT_MICROBATCH
        elif name in ("batch_id", "batch_size"):
            getattr(table, name)[rows] = values
            getattr(table, f"has_{name}")[rows] = True
        elif name == "level":
            table.level[rows] = values
        else:
            if (values < 0).any():
                raise Unsupported(f"a negative {name}")
            getattr(table, name)[rows] = values.view(np.uint64)

    def _value(self, start: int, end: int) -> Any:
        """One annotation's value, decoded by protobuf (strings, dicts, floats ...), cached by its bytes."""
        data = self.buf.bytes_at(start, end)
        cache = self.decoder.values
        if data in cache:
            return cache[data]
        try:
            value = get_annotation(_parsed(protos().DebugAnnotation, data))
        except UnicodeDecodeError as exc:
            raise Unsupported(f"a string field is not UTF-8 ({exc.reason})") from None
        if len(cache) > 65536:
            cache.clear()
        cache[data] = value
        return value

    def _other(self, table: SliceTable, name: str, rows: np.ndarray, value: Any, rank_keys: np.ndarray) -> None:
        """What ``checked_event`` and ``make_event`` make of an argument that is not a plain int,
        for every slice (``rows``) that carries this same value."""
        objects = table.objects
        try:
            if name == "microbatch":
                if value is None:
                    table.microbatch_kind[rows] = NO_MICROBATCH
                elif type(value) is int and -(1 << 63) <= value < (1 << 63):
                    table.microbatch[rows], table.microbatch_kind[rows] = value, INT_MICROBATCH
                else:
                    table.microbatch[rows], table.microbatch_kind[rows] = len(objects), OBJECT_MICROBATCH
                    objects.append(value)
            elif name in ("batch_id", "batch_size"):
                getattr(table, name)[rows] = 0 if value is None else to_int(value, name)
                getattr(table, f"has_{name}")[rows] = value is not None
            elif name == "level":
                table.level[rows] = 0 if value is None else to_int(value, "level")
            elif name in ("span_id", "parent_id"):
                number = 0 if value is None else to_int(value, name, high=(1 << 64) - 1)
                if number < 0:
                    raise Unsupported(f"a negative {name}")
                getattr(table, name)[rows] = number
            elif name == "error":
                table.error[rows] = -1 if value is None else len(objects)
                if value is not None:
                    objects.append(value if isinstance(value, str) else _json_text(value)[:200])
            elif name == "attrs":
                if value is None or (isinstance(value, dict) and not value):
                    table.attrs[rows] = -1
                else:
                    attrs = value if isinstance(value, dict) else {"value": value}
                    table.attrs[rows] = len(objects)
                    objects.append({str(key): item for key, item in attrs.items()})
            elif value is not None:
                rank_keys[rows] = self.decoder.rank_keys_index(value)
        except TraceFormatError as exc:
            raise Unsupported(exc.detail) from None
