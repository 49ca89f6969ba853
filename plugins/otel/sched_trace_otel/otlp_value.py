"""What an OTLP attribute may hold, decided once for every encoder (JSON, protobuf, SDK spans).

Events arrive with plain attribute values (``sched_trace.export.plain_value``); OTLP
narrows that further: int64 integers (larger ones become text), doubles, booleans,
strings, and arrays of at most 64 of those. Anything else is its text, 256
characters at most.
"""

from __future__ import annotations

from typing import Any

MAX_ARRAY = 64
MAX_TEXT = 256
_INT64 = 1 << 63
_SCALARS = (str, bool, int, float)


def otlp_value(value: Any) -> Any:
    """``value`` as an OTLP ``AnyValue`` can hold it: a str, bool, int64, float, or a list of those."""
    kind = type(value)
    if kind is str or kind is bool or kind is float:
        return value
    if kind is int:
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, (list, tuple)):
        items = value[:MAX_ARRAY]
        if all(isinstance(item, _SCALARS) for item in items):
            return [otlp_value(item) for item in items]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")[:MAX_TEXT]
    return str(value)[:MAX_TEXT]
