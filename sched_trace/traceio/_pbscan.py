"""Protocol-buffer wire data read with numpy: many messages at once, one field per step.

Reading a Perfetto trace packet by packet in Python costs several microseconds
per slice (the protobuf objects, then a dict per slice); ten million slices take
minutes. Here a chunk's messages are scanned together: step *j* decodes the
*j*-th field of every message still open, with vector operations, so the cost is
a few dozen numpy calls per field position, whatever the number of messages.

* :class:`WireBuffer` holds the bytes and decodes varints at many positions at once;
  a read at any position past the end gives zeros. Positions come from the data (a
  length, the end of an overlong varint) and may lie anywhere: every read at a
  decoded position goes through :meth:`WireBuffer.byte`, :meth:`~WireBuffer.word`
  or :meth:`~WireBuffer.varint`, which clamp it to the end, and the caller's bounds
  check (a field past its message) then names the damage.
* :func:`packet_spans` finds the top-level ``Trace.packet`` fields (tag ``0x0a``)
  of a chunk: candidate tags are filtered to those whose length lands on another
  candidate, and the chain from byte 0 is followed run by run.
* :func:`scan_fields` decodes every field of many messages; a lookup table maps
  the field numbers wanted to slots, and repeated fields are collected in order.

Wire data this cannot make sense of (a bad wire type, a field running past its
message) is reported, never guessed at: callers hand such input to the protobuf
reader, which names the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Optional, Sequence

import numpy as np

_U64 = np.uint64
_HIGH_BITS = _U64(0x8080808080808080)
_LOW_BITS = _U64(0x7F7F7F7F7F7F7F7F)
# Three rounds squeeze eight 7-bit groups into 56 contiguous bits.
_PAIR = (_U64(0x7F007F007F007F00), _U64(0x007F007F007F007F))
_QUAD = (_U64(0x3FFF00003FFF0000), _U64(0x00003FFF00003FFF))
_OCTET = (_U64(0x0FFFFFFF00000000), _U64(0x000000000FFFFFFF))
_ONE, _SEVEN, _LOW32 = _U64(1), _U64(7), _U64(0xFFFFFFFF)
PAD = 32
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
PACKET_TAG = 0x0A  # Trace.packet: field 1, length-delimited
_PRUNE_ROUNDS = 16


class WireBuffer:
    """Bytes for vector reads: one byte, or a little-endian 64-bit word, at any offset."""

    def __init__(self, padded: np.ndarray, size: int) -> None:
        self.size = size
        self.u8 = padded
        # A uint64 view with a one-byte stride: element i is the word starting at byte i.
        self.u64 = np.ndarray((size + PAD - 8,), dtype="<u8", buffer=padded, strides=(1,))

    @classmethod
    def from_bytes(cls, data: "bytes | bytearray | memoryview") -> "WireBuffer":
        padded = np.zeros(len(data) + PAD, np.uint8)
        padded[:len(data)] = np.frombuffer(data, np.uint8)
        return cls(padded, len(data))

    @classmethod
    def read(cls, handle: BinaryIO, size: int, keep: Optional[np.ndarray] = None) -> "WireBuffer":
        """``keep`` (bytes carried over from the last chunk) followed by up to ``size`` bytes of the file."""
        carried = 0 if keep is None else keep.size
        padded = np.zeros(carried + size + PAD, np.uint8)
        if carried:
            padded[:carried] = keep
        got = handle.readinto(memoryview(padded)[carried:carried + size])
        return cls(padded, carried + (got or 0))

    def bytes_at(self, start: int, end: int) -> bytes:
        return self.u8[start:end].tobytes()

    def _within(self, pos: np.ndarray) -> np.ndarray:
        """``pos`` with every position past the end moved to the end (where the padding reads as
        zeros, as every byte past the end would): a decoded position never indexes out."""
        return np.minimum(pos, self.size)

    def byte(self, pos: np.ndarray) -> np.ndarray:
        """The bytes at ``pos`` (non-negative; zero past the end)."""
        return self.u8[self._within(pos)]

    def word(self, pos: np.ndarray) -> np.ndarray:
        """The little-endian 64-bit words starting at ``pos`` (non-negative; bytes past the end read as zero)."""
        return self.u64[self._within(pos)]

    def varint(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(value, next position)`` of the varints at ``pos`` (non-negative); one at or past the
        end reads as 0, one byte long. A varint longer than 10 bytes (never valid) comes back
        with a position far past the end: the caller's bounds check catches both."""
        pos = np.asarray(pos, np.int64)
        first = self.byte(pos)
        long = np.flatnonzero(first >= 0x80)
        value = first.astype(_U64)
        after = pos + 1
        if long.size:  # these start inside the buffer (past the end every byte is zero)
            value[long], after[long] = self._long_varints(pos[long])
        return value, after

    def _long_varints(self, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Varints of 2 to 10 bytes starting at ``start`` (< size: the words read stay in the padded array)."""
        word = self.u64[start]
        ends = ~word & _HIGH_BITS
        stop = ends & (~ends + _ONE)  # the high bit of the first byte without a continuation
        keep = np.where(stop == 0, ~_U64(0), (stop << _ONE) - _ONE)
        bits = word & _LOW_BITS & keep
        bits = ((bits & _PAIR[0]) >> _ONE) | (bits & _PAIR[1])
        bits = ((bits & _QUAD[0]) >> _U64(2)) | (bits & _QUAD[1])
        bits = ((bits & _OCTET[0]) >> _U64(4)) | (bits & _OCTET[1])
        length = np.bitwise_count(keep & _HIGH_BITS).astype(np.int64)
        nine_plus = np.flatnonzero(stop == 0)
        if nine_plus.size:
            tail = self.u64[start[nine_plus] + 8]
            bits[nine_plus] |= ((tail & _U64(0x7F)) << _U64(56)) | (((tail >> _U64(8)) & _ONE) << _U64(63))
            tenth = (tail & _U64(0x80)) != 0
            too_long = tenth & ((tail & _U64(0x8000)) != 0)
            # An 11th byte is no varint: its position goes far past any message, which reads as broken.
            length[nine_plus] = np.where(too_long, 1 << 60, np.where(tenth, 10, 9))
        return bits, start + length


def as_int64(values: np.ndarray) -> np.ndarray:
    """uint64 wire values as the int64 they encode (two's complement)."""
    return values.view(np.int64)


@dataclass
class Fields:
    """The fields :func:`scan_fields` found: one row per slot, one column per message."""

    value: np.ndarray   # (slots, messages) uint64: varint or fixed value, or the payload's length
    start: np.ndarray   # (slots, messages) int64: where the payload starts (0: the field is absent)
    end: np.ndarray     # (slots, messages) int64: where it ends
    repeated: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # field -> (message, start, end)
    bad: np.ndarray     # (messages,) bool: wire data that is not protobuf

    def has(self, slot: "int | slice") -> np.ndarray:
        """Which messages have the field (a payload follows its tag, so never starts at byte 0)."""
        return self.start[slot] > 0

    @property
    def messages(self) -> int:
        return self.start.shape[1]


_TAGS = 1 << 11  # tags of fields 1..255 are looked up directly; larger ones are skipped
_SKIP, _BROKEN = -1, -2
_NOT_WIRES = np.array([3, 4, 6, 7], np.uint64)  # group start/end and unused wire types


def field_table(slots: dict[int, tuple[int, int]], repeated: Sequence[int] = ()) -> np.ndarray:
    """The lookup table :func:`scan_fields` takes, by tag (field number and wire type).

    ``slots`` maps a field number to ``(slot, wire type)``: a field seen with another
    wire type is skipped, as protobuf treats it as unknown. Length-delimited fields
    numbered in ``repeated`` are collected in order instead.
    """
    table = np.full(_TAGS, _SKIP, np.int64)
    for tag in range(_TAGS):
        if tag & 7 in (3, 4, 6, 7) or tag >> 3 == 0:
            table[tag] = _BROKEN
    for field, (slot, wire) in slots.items():
        table[(field << 3) | wire] = slot
    for index, field in enumerate(repeated):
        table[(field << 3) | LENGTH] = -3 - index
    return table


# long: one vectorised pass over all messages at once (a field a round), each step a numpy line
def scan_fields(buf: WireBuffer, starts: np.ndarray, ends: np.ndarray, table: np.ndarray, slots: int,
                repeated: Sequence[int] = ()) -> Fields:
    """Every field of the messages ``[starts, ends)``, by :func:`field_table`'s ``table``.

    The last value of a field wins; the fields numbered in ``repeated`` (as given to
    :func:`field_table`) come back as (message, start, end) in the order they were read.
    """
    messages = starts.size
    value = np.zeros((slots, messages), _U64)
    start = np.zeros((slots, messages), np.int64)
    end = np.zeros((slots, messages), np.int64)
    flat_value, flat_start, flat_end = value.reshape(-1), start.reshape(-1), end.reshape(-1)
    collected: list[tuple[np.ndarray, ...]] = []
    bad = np.zeros(messages, bool)
    pos = starts.astype(np.int64, copy=True)
    active = np.flatnonzero(pos < ends)
    while active.size:
        at = pos[active]
        tag, at = buf.varint(at)
        if tag.max() < _TAGS:
            code = table[tag.view(np.int64)]
        else:  # fields above 255: skipped, but their wire type still says how far
            code = table[np.minimum(tag, _U64(_TAGS - 1)).view(np.int64)]
            big = np.flatnonzero(tag >= _U64(_TAGS))
            code[big] = np.where(np.isin(tag[big] & _SEVEN, _NOT_WIRES), _BROKEN, _SKIP)
        payload, after = buf.varint(at)
        payload_start, payload_end = at, after
        wire = (tag & _SEVEN).view(np.int64)
        lengthy = wire == LENGTH
        if lengthy.any():
            payload_start = np.where(lengthy, after, at)
            payload_end = np.where(lengthy, after + np.minimum(payload, _U64(1 << 48)).view(np.int64), after)
        fixed = np.flatnonzero((wire & 3) == 1)  # FIXED64 (1) and FIXED32 (5)
        if fixed.size:
            word = buf.word(at[fixed])  # an overlong tag put ``at`` far past the end
            wide = wire[fixed] == FIXED64
            payload[fixed] = np.where(wide, word, word & _LOW32)
            payload_end[fixed] = at[fixed] + np.where(wide, 8, 4)
        limits = ends[active]
        broken = (code == _BROKEN) | (payload_end > limits)  # an overlong varint lands far past its message
        if broken.any():
            bad[active[broken]] = True
            code = np.where(broken, _SKIP, code)
        wanted = np.flatnonzero(code >= 0)
        if wanted.size:
            flat = code[wanted] * messages + active[wanted]
            flat_value[flat] = payload[wanted]
            flat_start[flat] = payload_start[wanted]
            flat_end[flat] = payload_end[wanted]
        if repeated:
            hits = np.flatnonzero(code <= -3)
            if hits.size:
                collected.append((-3 - code[hits], active[hits], payload_start[hits], payload_end[hits]))
        pos[active] = payload_end
        active = active[(payload_end < limits) & ~broken]
    found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    parts = [np.concatenate(column) for column in zip(*collected)] if collected else [np.zeros(0, np.int64)] * 4
    for index, number in enumerate(repeated):
        mine = parts[0] == index
        found[number] = (parts[1][mine], parts[2][mine], parts[3][mine])
    return Fields(value, start, end, found, bad)


@dataclass
class PacketSpans:
    """The complete packets at the start of a chunk, and how the chunk ends."""

    body_start: np.ndarray  # where each packet's TracePacket bytes start
    body_end: np.ndarray
    complete_end: int       # bytes consumed by complete packets
    broken_at: Optional[int]  # a byte where the wire data stops being packets (None: fine)


# long: the packet chain walked by byte with numpy, and the cut-short tail told apart from damage
def packet_spans(buf: WireBuffer, final: bool) -> PacketSpans:
    """The ``Trace.packet`` fields of the chunk; a packet running past the end is left for the
    next chunk (``final=False``) or reported as the cut-short tail (``final=True``)."""
    size = buf.size
    empty = np.zeros(0, np.int64)
    if size == 0:
        return PacketSpans(empty, empty, 0, None)
    if buf.u8[0] != PACKET_TAG:
        return PacketSpans(empty, empty, 0, 0)
    candidates = np.flatnonzero(buf.u8[:size] == PACKET_TAG)
    length, body = buf.varint(candidates + 1)
    ok = body < (1 << 59)
    following = body + np.minimum(length, _U64(1 << 48)).view(np.int64)
    # Which candidate starts at a byte: a table over the chunk's bytes (faster than a binary search).
    node_at = np.full(size + 1, -1, np.int32)
    node_at[candidates] = np.arange(candidates.size, dtype=np.int32)
    inside = following < size
    keep = ok & ~inside | ok & inside & (node_at[np.where(inside, following, size)] >= 0)
    if not keep[0]:  # the first packet leads nowhere: these bytes are not packets
        return PacketSpans(empty, empty, 0, 0)
    nodes, body, following = candidates[keep], body[keep], following[keep]
    at_end, past_end, nowhere = -2, -3, -1
    for round_ in range(_PRUNE_ROUNDS + 1):
        node_at[candidates] = -1
        node_at[nodes] = np.arange(nodes.size, dtype=np.int32)
        candidates = nodes
        inside = following < size
        target = np.where(inside, node_at[np.where(inside, following, size)], nowhere).astype(np.int64)
        # A stray 0x0a inside a packet is reached from no packet: drop it (and what only it reached).
        orphan = np.bincount(target[target >= 0], minlength=len(nodes)) == 0
        orphan[0] = False
        if not orphan.any() or round_ == _PRUNE_ROUNDS:  # what is left is walked run by run below
            break
        nodes, body, following = nodes[~orphan], body[~orphan], following[~orphan]
    target = np.where(following == size, at_end, np.where(following > size, past_end, target))
    breaks = np.flatnonzero(target != np.arange(1, len(nodes) + 1))  # the last node always breaks
    chosen: list[np.ndarray] = []
    current = 0
    broken_at: Optional[int] = None
    while True:  # one round per run of consecutive packets: a stray 0x0a byte inside a packet ends a run
        stop = int(breaks[np.searchsorted(breaks, current)])
        chosen.append(np.arange(current, stop + 1))
        following_node = int(target[stop])
        if following_node == at_end:
            break
        if following_node == past_end:  # the last packet runs past the chunk
            chosen[-1] = chosen[-1][:-1]
            break
        if following_node == nowhere:
            broken_at = int(following[stop])
            break
        current = following_node
    picked = np.concatenate(chosen) if chosen else empty
    complete = int(following[picked[-1]]) if picked.size else 0
    return PacketSpans(body[picked], following[picked], complete, broken_at)


# --- byte strings compared and grouped without decoding them -----------------------------------

KEY_WORDS = 4
KEY_BYTES = 8 * KEY_WORDS
_TAIL_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def string_keys(names: "list[bytes]") -> dict[tuple, int]:
    """The keys :func:`short_keys` gives these byte strings, mapped to their position."""
    keys = {}
    for index, name in enumerate(names):
        padded = name.ljust(KEY_BYTES, b"\0")
        keys[(len(name),) + tuple(int.from_bytes(padded[8 * k:8 * k + 8], "little") for k in range(KEY_WORDS))] = index
    return keys


def short_keys(buf: WireBuffer, start: np.ndarray, end: np.ndarray, words: int = KEY_WORDS) -> list[np.ndarray]:
    """[length, word 0, ...] of byte strings up to ``8 * words`` bytes long, zero-padded (longer: cut).

    A word past a string's end is zero without being read: only strings that long are gathered.
    """
    length = end - start
    keys = [length]
    for k in range(words):
        word = np.zeros(length.size, np.uint64)
        rows = np.flatnonzero(length > 8 * k) if k else slice(None)
        word[rows] = buf.word(start[rows] + 8 * k) & _TAIL_MASKS[np.minimum(length[rows] - 8 * k, 8)]
        keys.append(word)
    return keys


def match_keys(keys: dict[tuple, int], found_keys: list[np.ndarray]) -> np.ndarray:
    """Index of each string among ``keys`` (-1: none of them); ``keys`` hold at most ``len(found_keys) - 1`` words."""
    found = np.full(found_keys[0].size, -1, np.int64)
    for key, index in keys.items():
        if any(key[len(found_keys):]):
            continue  # longer than the words compared: no string here can be it
        hit = found_keys[0] == key[0]
        for column, word in zip(found_keys[1:], key[1:]):
            hit &= column == np.uint64(word)
        found[hit] = index
    return found


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))
_FEW = 32


def group_rows(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(representative rows, inverse)``: rows with equal keys (columns of equal length) grouped.

    The usual chunk has a handful of distinct slice names or ranks: they are peeled
    off one by one; many distinct keys are sorted instead.
    """
    count = keys[0].size
    digest = np.zeros(count, np.uint64)
    for column in keys:
        digest = (digest ^ column.astype(np.uint64, copy=False)) * _MIX[0]
        digest ^= digest >> np.uint64(29)
    inverse = np.empty(count, np.int64)
    representatives: list[int] = []
    remaining = np.arange(count)
    while remaining.size and len(representatives) < _FEW:
        first = int(remaining[0])
        same = digest[remaining] == digest[first]
        inverse[remaining[same]] = len(representatives)
        representatives.append(first)
        remaining = remaining[~same]
    rows = np.asarray(representatives, np.int64)
    if remaining.size:
        _, first_of, grouped = np.unique(digest[remaining], return_index=True, return_inverse=True)
        inverse[remaining] = grouped.reshape(-1) + rows.size
        rows = np.concatenate([rows, remaining[first_of]])
    for column in keys:  # equal digests of different keys would merge two names: never let them
        if (column[rows[inverse]] != column).any():
            exact, grouped = np.unique(np.rec.fromarrays(keys), return_inverse=True)
            grouped = grouped.reshape(-1)
            first_rows = np.full(exact.size, count, np.int64)
            np.minimum.at(first_rows, grouped, np.arange(count))
            return first_rows, grouped
    return rows, inverse


class Unsupported(Exception):
    """What this reader does not decode; the message says what (and ``where``, a packet)."""

    def __init__(self, detail: str, where: Optional[str] = None) -> None:
        super().__init__(detail)
        self.detail, self.where = detail, where


def _parsed(message: Any, data: bytes, where: Optional[str] = None) -> Any:
    """A protobuf message from bytes; what protobuf refuses is :class:`Unsupported`."""
    try:
        return message.FromString(data)
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError): the same meaning
        raise Unsupported(f"not a Perfetto protobuf trace, or corrupt ({exc})", where) from None
