"""Chrome trace JSON read back into events, exactly (see ``_chrome`` for the layout).

Timestamps are parsed as ``Decimal`` so every nanosecond survives. A file cut
short by a crash is read up to its last complete event, with a warning; every
other problem is a :class:`TraceFormatError` naming the file and the event
(``traceEvents[7]``).
"""

from __future__ import annotations

import json
import warnings
from decimal import Decimal
from typing import Any, Iterator, Optional

from .._errors import SchedTraceWarning
from .._events import RankInfo
from ._checks import (
    MAX_DEPTH, checked_event, checked_rank, expect_dict, expect_list, hashable, kind_of, ns_from_us,
    optional_dict, optional_list, to_int,
)
from ._chrome import _is_profiler_step
from ._model import NotATraceError, TraceFile, TraceFormatError


def read_chrome(path: str, text: str) -> TraceFile:
    document = _load(path, text)
    if isinstance(document, list):  # the bare-array form of the format
        document = {"traceEvents": document}
    if not isinstance(document, dict) or "traceEvents" not in document:
        raise NotATraceError("no 'traceEvents' array; not a Chrome trace JSON file", path=path)
    result = TraceFile(path=path, format="chrome")
    try:
        result.clock_offsets.update(_clock_offsets(document.get("sched_trace")))
        records = expect_list(document["traceEvents"], "traceEvents")
    except TraceFormatError as exc:
        raise exc.located(path) from None
    ranks = {}
    for index, record in enumerate(records):
        try:
            _read_thread_name(expect_dict(record, "an event"), ranks)
        except TraceFormatError as exc:
            raise exc.located(path, f"traceEvents[{index}]") from None
    for index, record in enumerate(records):
        if record.get("ph") != "X" or "dur" not in record:
            continue
        try:
            optional_dict(record.get("args"), "args")
            if _is_profiler_step(record):
                continue
            result.events.append(_slice(record, ranks))
        except TraceFormatError as exc:
            raise exc.located(path, f"traceEvents[{index}]") from None
    return result


def _clock_offsets(meta: Any) -> dict[tuple[str, int], int]:
    offsets = {}
    items = optional_dict(meta, "sched_trace").get("clock_offsets")
    for item in optional_list(items, "sched_trace.clock_offsets"):
        item = expect_dict(item, "a clock offset")
        key = (str(hashable(item.get("host_id"))), to_int(item.get("pid"), "clock offset pid"))
        offsets[key] = to_int(item.get("clock_offset_ns"), "clock_offset_ns")
    return offsets


def _read_thread_name(record: dict, ranks: dict) -> None:
    if record.get("ph") != "M" or record.get("name") != "thread_name":
        return
    args = optional_dict(record.get("args"), "args")
    key = _thread_key(record)
    stored = args.get("sched_trace_rank")
    if stored is not None:
        ranks[key] = checked_rank(_plain(stored), "sched_trace_rank")
    else:
        ranks[key] = _unknown_rank(record, str(hashable(args.get("name", "thread"))))


def _thread_key(record: dict) -> tuple[Any, Any]:
    return hashable(record.get("pid")), hashable(record.get("tid"))


def _unknown_rank(record: dict, label: str) -> RankInfo:
    return RankInfo("unknown", to_int(record.get("pid") or 0, "pid"), to_int(record.get("tid") or 0, "tid"), label)


def _slice(record: dict, ranks: dict) -> Any:
    key = _thread_key(record)
    rank = ranks.get(key) or _unknown_rank(record, f"tid-{key[1]}")
    start = ns_from_us(record.get("ts"), "ts")
    duration = ns_from_us(record["dur"], "dur")
    kind = "batch" if record.get("cat") == "batch" else "stage"
    args = _plain(optional_dict(record.get("args"), "args"))
    return checked_event(kind, record.get("name", ""), start, start + duration, rank, args)


def _load(path: str, text: str) -> Any:
    try:
        return _parse(text)
    except ValueError as exc:
        first = exc
    # A writer that died mid-run leaves the event array open, maybe mid-event: close it.
    closing = "]" if text.lstrip().startswith("[") else "\n]}"
    body = text.rstrip()
    for kept in _cut_points(body):
        document = _try_parse(kept.rstrip().rstrip(",") + closing)
        if document is not None:
            _warn_cut(path, len(text.encode()) - len(kept.encode()))
            return document
    raise TraceFormatError(f"not a Chrome trace JSON file ({first})", path=path)


def _cut_points(body: str, tries: int = 8) -> Iterator[str]:
    """The text as is, before its last line, then before each of its last few ``}`` (one-line files)."""
    yield body
    last_line = body.rfind("\n")
    if last_line > 0:
        yield body[:last_line]
    end = len(body)
    for _ in range(tries):
        end = body.rfind("}", 0, end)
        if end <= 0:
            return
        yield body[:end + 1]


def _parse(text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise TraceFormatError("JSON nested too deeply") from None


def _try_parse(text: str) -> Optional[Any]:
    try:
        return _parse(text)
    except ValueError:  # TraceFormatError included
        return None


def _warn_cut(path: str, dropped: int) -> None:
    what = f"the last {dropped} bytes (an incomplete event) dropped" if dropped > 0 else "its closing ']}' missing"
    warnings.warn(SchedTraceWarning(f"{path}: cut short ({what}); read up to the last complete event"),
                  stacklevel=4)


def _plain(value: Any, depth: int = 0) -> Any:
    """Decimals back to float, recursively."""
    if isinstance(value, Decimal):  # only non-integer literals become Decimal
        return float(value)
    if depth > MAX_DEPTH and isinstance(value, (dict, list)):
        raise TraceFormatError(f"an argument is nested deeper than {MAX_DEPTH} levels ({kind_of(value)})")
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    return value
