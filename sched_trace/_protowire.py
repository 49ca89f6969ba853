"""The one protobuf wire-format writer: varints and fields, for encoders that build bytes by hand.

Used where a benchmark shows the hand-written bytes beat the generated message
classes (benchmarks/bench_encoders.py): the Perfetto trace writer
(:mod:`sched_trace.traceio`) and the otel plugin's OTLP encoder, which reaches it
as ``sched_trace.export.protowire``. Only writing; the readers use protobuf.
"""

from __future__ import annotations

import struct

_SMALL = [bytes((value,)) for value in range(128)]
# Every 14-bit group as two continued varint bytes: a 9-byte timestamp takes 4 look-ups.
_PAIRS = [bytes(((group & 0x7F) | 0x80, (group >> 7) | 0x80)) for group in range(1 << 14)]
_UINT64 = (1 << 64) - 1
fixed64 = struct.Struct("<Q").pack
double = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    """A non-negative integer (or an int64, as its two's complement) as a base-128 varint."""
    if 0 <= value < 128:
        return _SMALL[value]
    value &= _UINT64
    out = b""
    while value >= 1 << 14:
        out += _PAIRS[value & 0x3FFF]
        value >>= 14
    if value < 128:
        return out + _SMALL[value]
    return out + _PAIRS[value][:1] + _SMALL[value >> 7]


def tag(number: int, wire_type: int) -> bytes:
    """A field's key: ``number << 3 | wire_type`` (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32)."""
    return varint(number << 3 | wire_type)


def field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message): its encoded ``key``, length, payload."""
    size = len(payload)
    return key + (_SMALL[size] if size < 128 else varint(size)) + payload
