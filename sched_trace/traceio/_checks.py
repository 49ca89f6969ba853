"""Checked reads of untrusted trace content: a wrong type or range is a TraceFormatError.

Readers see files from crashed ranks, other tools and random bytes. Every value
they take from a file goes through one of these, so what comes out is either a
well-typed event (ints in the int64 range, hashable ranks and micro-batch ids)
or an error that says which thing was wrong; never a ``TypeError`` from deep
inside the merge, the writers or the analysis.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any, Mapping, Optional

from .._events import RankInfo
from ._model import RANK_FIELDS, RANK_KEYS_ARG, Event, TraceFormatError, make_event

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
#: Nested attribute values deeper than this are refused (the JSON parser's own limit is ~1000).
MAX_DEPTH = 64
_SCALARS = (str, int, float, bool, type(None))


def kind_of(value: Any) -> str:
    """The type named as the file's format would: ``list``, ``str``, ``dict`` ..."""
    if isinstance(value, Decimal):
        return "number"
    return "null" if value is None else type(value).__name__


def expect_list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise TraceFormatError(f"{what} must be a list, got {kind_of(value)}")
    return value


def expect_dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise TraceFormatError(f"{what} must be an object, got {kind_of(value)}")
    return value


def optional_list(value: Any, what: str) -> list:
    """A list, or ``[]`` when the field is absent or null."""
    return [] if value is None else expect_list(value, what)


def optional_dict(value: Any, what: str) -> dict:
    return {} if value is None else expect_dict(value, what)


def expect_str(value: Any, what: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise TraceFormatError(f"{what} must be a string, got {kind_of(value)}")
    return value


def to_int(value: Any, what: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """An integer given as a number or as decimal text (int64 travels as text in JSON)."""
    if isinstance(value, bool):
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and 0 < len(value.strip()) <= 24:
        try:
            number = int(value.strip())
        except ValueError:
            raise TraceFormatError(f"{what} must be an integer, got {value!r}") from None
    elif isinstance(value, (float, Decimal)) and _finite(value) and abs(value) < 2 ** 64 and value == int(value):
        number = int(value)
    else:
        raise TraceFormatError(f"{what} must be an integer, got {_short(value)}")
    if not low <= number <= high:
        raise TraceFormatError(f"{what} = {number} is out of range [{low}, {high}]")
    return number


def optional_int(value: Any, what: str) -> Optional[int]:
    return None if value is None else to_int(value, what)


def to_float(value: Any, what: str) -> float:
    """A double given as a number or as text (``"NaN"``, ``"Infinity"`` in protobuf JSON)."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise TraceFormatError(f"{what} is too large for a double") from None
    if isinstance(value, str) and len(value) <= 64:
        try:
            return float(value)
        except ValueError:
            pass
    raise TraceFormatError(f"{what} must be a number, got {_short(value)}")


def ns_from_us(value: Any, what: str) -> int:
    """Chrome microseconds (a number, exact decimal) as int64 nanoseconds."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = Decimal(value)
        except ArithmeticError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or not _finite(value):
        raise TraceFormatError(f"{what} must be a finite number of microseconds, got {_short(value)}")
    if not abs(value) < Decimal(INT64_MAX) / 1000:  # checked first: int() of 1e999999 would not end
        raise TraceFormatError(f"{what} = {value} us is out of the int64 nanosecond range")
    return int(Decimal(value) * 1000)


def hashable(value: Any, depth: int = 0) -> Any:
    """A value usable as a key (rank extras, micro-batch ids): lists become tuples, objects JSON text."""
    if isinstance(value, _SCALARS):
        return float(value) if isinstance(value, Decimal) else value
    if isinstance(value, Decimal):
        return float(value)
    if depth >= MAX_DEPTH:
        raise TraceFormatError(f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        return tuple(hashable(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return _json_text(value)
    raise TraceFormatError(f"unexpected value of type {kind_of(value)}")


def checked_rank(values: Any, what: str = "rank") -> RankInfo:
    """A RankInfo from a dict read out of a file (the inverse of ``rank_to_dict``), type-checked."""
    values = expect_dict(values, what)

    def ranked(key: str) -> Optional[int]:
        return optional_int(values.get(key), f"{what}.{key}")

    extras = tuple(sorted((str(key), hashable(value)) for key, value in values.items() if key not in RANK_FIELDS))
    return RankInfo(
        host_id=_text(values.get("host_id"), "unknown"),
        pid=to_int(values.get("pid", 0), f"{what}.pid"),
        tid=to_int(values.get("tid", 0), f"{what}.tid"),
        thread_label=_text(values.get("thread_label"), "thread"),
        tp_rank=ranked("tp_rank"), pp_rank=ranked("pp_rank"), dp_rank=ranked("dp_rank"),
        extra=extras,
    )


def checked_event(kind: str, name: Any, start_ns: Any, end_ns: Any, rank: RankInfo,
                  args: Any) -> Event:
    """``make_event`` after checking every field the writers and the analysis rely on."""
    start = to_int(start_ns, "start time")
    end = to_int(end_ns, "end time")
    if end < start:
        raise TraceFormatError(f"slice {_text(name, '')[:60]!r} ends ({end}) before it starts ({start})")
    args = dict(expect_dict(args, "slice arguments"))
    if "level" in args:
        args["level"] = to_int(args["level"], "level") if args["level"] is not None else 0
    for key in ("span_id", "parent_id"):  # OTLP ids are 64 unsigned bits
        if key in args:
            args[key] = to_int(args[key], key, high=UINT64_MAX) if args[key] is not None else 0
    for key in ("batch_id", "batch_size"):
        if args.get(key) is not None:
            args[key] = to_int(args[key], key)
    if args.get("error") is not None:
        args["error"] = _text(args["error"], "error")
    attrs = args.get("attrs")
    if attrs is not None and not isinstance(attrs, Mapping):
        args["attrs"] = {"value": attrs}
    elif attrs:
        args["attrs"] = {str(key): value for key, value in attrs.items()}
    if args.get(RANK_KEYS_ARG) is not None:
        keys = expect_dict(args[RANK_KEYS_ARG], RANK_KEYS_ARG)
        args[RANK_KEYS_ARG] = {str(key): hashable(value) for key, value in keys.items()}
    return make_event(kind, _text(name, ""), start, end, rank, args)


def _text(value: Any, default: str) -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else _json_text(value)[:200]


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (RecursionError, ValueError, TypeError):  # nested too deep, or keys of mixed types
        raise TraceFormatError(f"value of type {kind_of(value)} cannot be read (nested too deep?)") from None


def _finite(value: Any) -> bool:
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _short(value: Any) -> str:
    """A value for a message: its type, and its text when short."""
    text = str(value) if isinstance(value, Decimal) else repr(value)
    return f"{kind_of(value)} {text}" if len(text) <= 40 else kind_of(value)
