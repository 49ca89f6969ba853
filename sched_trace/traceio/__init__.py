"""Trace files in and out: Perfetto protobuf, Chrome JSON, OTLP-JSON.

Readers turn any of the three back into :class:`~sched_trace.StageEvent` /
:class:`~sched_trace.BatchEvent` (with :class:`~sched_trace.RankInfo`) plus each
process's recorded clock offset; writers turn events into Perfetto or Chrome
files. ``sched-trace merge``/``convert``/``report`` and the Perfetto plugin all go
through here. Only the Perfetto protobuf format needs the ``perfetto`` package,
imported when first used.

    traces = read_traces(["out/"])                # every trace file under out/
    merged = merge_traces(traces)                 # clocks aligned, duplicates dropped
    write_perfetto(merged.events, "all.perfetto-trace", clock_offsets=merged.clock_offsets)
    events = read_events(["out/"])                # the same events, one call
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from ._chrome import ChromeWriter
from ._chrome_read import read_chrome
from ._model import (
    EmptyTraceError, Event, NotATraceError, ProcessKey, RecordedError, TraceFile,
    TraceFormatError, event_key, flow_id,
    stable_id, track_rank, track_uuid,
)
from ._files import (
    FORMATS, PERFETTO_SUFFIXES, TRACE_SUFFIXES, detect_format, expand_paths, parse_trace, read_trace,
    read_traces, sniff_format,
)
from ._otlp import otlp_documents, read_otlp_json
from ._perfetto import PerfettoEncoder, perfetto_sequence_id
from ._perfetto_read import read_perfetto

PathLike = Union[str, "os.PathLike[str]"]
#: Reading as columns needs numpy: imported on first use (the exporters' writers need none of it).
_COLUMNAR = {"Catalog": "._columns", "SliceTable": "._columns", "TraceScan": "._scan", "scan_traces": "._scan"}


def __getattr__(name: str) -> object:
    if name in _COLUMNAR:
        import importlib

        return getattr(importlib.import_module(_COLUMNAR[name], __name__), name)
    raise AttributeError(f"module 'sched_trace.traceio' has no attribute {name!r}")

__all__ = [
    "Catalog", "ChromeWriter", "EmptyTraceError", "Event", "FORMATS", "MergedTrace", "NotATraceError",
    "PerfettoEncoder", "ProcessKey",
    "RecordedError", "TraceFile", "TraceFormatError", "align_offsets", "detect_format",
    "event_key", "expand_paths", "flow_id", "merge_traces", "otlp_documents", "read_otlp_json", "parse_trace", "perfetto_sequence_id",
    "read_events", "read_trace", "read_traces", "scan_traces", "sniff_format", "SliceTable", "stable_id",
    "TraceScan", "track_rank", "track_uuid", "write_chrome", "write_perfetto", "write_trace",
]


@dataclass
class MergedTrace:
    """Events of many files on one timeline; ``clock_offsets`` hold for the new times."""

    events: list[Event] = field(default_factory=list)
    clock_offsets: dict[ProcessKey, int] = field(default_factory=dict)
    duplicates: int = 0
    sources: list[str] = field(default_factory=list)


def align_offsets(offsets: Mapping[ProcessKey, int]) -> dict[ProcessKey, int]:
    """Per process, the shift (ns) that puts it on its host's reference clock.

    Processes on one host share the monotonic clock, so ``ts - own offset +
    reference offset`` places them exactly, whatever their wall clocks did in
    between; the reference is the host's first process (lowest pid). Different
    hosts keep their wall clocks (no shared monotonic clock exists).
    """
    reference: dict[str, int] = {}
    for (host, _pid), offset in sorted(offsets.items()):
        reference.setdefault(host, offset)
    return {key: reference[key[0]] - offset for key, offset in offsets.items()}


def merge_traces(traces: Sequence[TraceFile], align: bool = True) -> MergedTrace:
    """One timeline from many files: clocks aligned, each slice kept exactly once."""
    offsets: dict[ProcessKey, int] = {}
    for trace in traces:
        for key, offset in trace.clock_offsets.items():
            offsets.setdefault(key, offset)
    shifts = align_offsets(offsets) if align else {}
    merged = MergedTrace(sources=[t.path for t in traces])
    seen: set[tuple] = set()
    for trace in traces:
        for event in trace.events:
            key = event_key(event)
            if key in seen:
                merged.duplicates += 1
                continue
            seen.add(key)
            shift = shifts.get((event.rank.host_id, event.rank.pid), 0)
            if shift:
                event = event._replace(start_ns=event.start_ns + shift, end_ns=event.end_ns + shift)
            merged.events.append(event)
    merged.events.sort(key=lambda e: (e.start_ns, -(e.end_ns or 0)))
    merged.clock_offsets = {key: offset + shifts.get(key, 0) for key, offset in offsets.items()}
    return merged


def read_events(paths: Iterable[PathLike], align: bool = True) -> list[Event]:
    """Every event in the given files/directories, merged onto one timeline."""
    return merge_traces(read_traces(paths), align=align).events


def write_perfetto(events: Iterable[Event], path: PathLike,
                   clock_offsets: Optional[Mapping[ProcessKey, int]] = None,
                   counter_attrs: Iterable[str] = ("queue_depth",), track_keys: Iterable[str] = ()) -> int:
    """Write a Perfetto protobuf trace; returns the number of slices written.

    One track per rank thread; ``track_keys`` names extra rank keys that split it.
    """
    events = [e for e in events if e.end_ns is not None]
    encoder = PerfettoEncoder(sequence_id=1, counter_attrs=counter_attrs, track_keys=track_keys)
    encoder.clock_offsets = dict(clock_offsets or {})
    with open(path, "wb") as handle:
        if len(encoder.clock_offsets) == 1 and events:
            (offset,) = encoder.clock_offsets.values()
            first = min(e.start_ns for e in events)
            if first >= offset >= 0:  # a clock snapshot holds unsigned times (the descriptors keep the offset)
                handle.write(encoder.clock_snapshot(offset, first))
        handle.write(encoder.encode(events))
    return len(events)


def write_chrome(events: Iterable[Event], path: PathLike,
                 clock_offsets: Optional[Mapping[ProcessKey, int]] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 counter_attrs: Iterable[str] = ("queue_depth",), track_keys: Iterable[str] = ()) -> int:
    """Write a Chrome trace JSON file; returns the number of slices written."""
    events = [e for e in events if e.end_ns is not None]
    with open(path, "w", encoding="utf-8") as handle:
        writer = ChromeWriter(handle, rank=rank, world_size=world_size, clock_offsets=clock_offsets or {},
                              counter_attrs=counter_attrs, track_keys=track_keys)
        writer.write(events)
        writer.close()
    return len(events)


def write_trace(events: Iterable[Event], path: PathLike, format: Optional[str] = None,
                clock_offsets: Optional[Mapping[ProcessKey, int]] = None, track_keys: Iterable[str] = ()) -> int:
    """Perfetto or Chrome JSON, by ``format`` or by the suffix (``.json`` is Chrome)."""
    format = format or ("chrome" if os.fspath(path).endswith(".json") else "perfetto")
    if format == "chrome":
        return write_chrome(events, path, clock_offsets, track_keys=track_keys)
    if format == "perfetto":
        return write_perfetto(events, path, clock_offsets, track_keys=track_keys)
    raise ValueError(f"cannot write {format!r}; use 'perfetto' or 'chrome'")
