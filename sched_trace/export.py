"""The plugin-author surface: everything an exporter plugin may import besides ``sched_trace``.

Third-party plugins (and the built-in ones under ``plugins/``) import from here and
from the top-level :mod:`sched_trace` API only; every name below is kept stable and
documented in docs/plugins.md. ``tests/test_plugin_surface.py`` fails on a built-in
plugin that reaches past it.

An exporter (one class; the core runs it in its own process or on a thread)
    :class:`Exporter` (``export``, ``flush``, ``shutdown``, ``counters``),
    :class:`ExporterPlugin` (a whole plugin from one Exporter class),
    :class:`ExportProcessor` (buffer, exporter thread, exporter process: what
    ExporterPlugin runs), :data:`DROPPED` (the marker event of dropped events).
Off the scheduler thread, by hand
    :class:`BackgroundExporter` (bounded buffer + exporter thread; the hook appends),
    :class:`EventBuffer` (the bounded buffer alone).
The one encoding
    :class:`EventEncoder` and :func:`decode_events` (events to frame bytes and back),
    :func:`plain_value` (what an attribute value becomes), :class:`RecordedError`
    (a recorded exception as data: type name, message, traceback text; also what
    a trace file's error reads back as).
Producing events
    :func:`emit` delivers events a plugin made itself (GPU time, say) to every other
    plugin, guarded per plugin; :func:`is_registered` says whether a plugin is in.
Identity and clocks
    :func:`current_rank`, :func:`host_id`, :func:`wall_offset_ns`, :func:`now_ns`,
    :func:`parse_traceparent`, :func:`format_traceparent`.
Requests
    :func:`request_ids`: a ``requests`` attribute as ids only, never payloads;
    :func:`request_context`, :func:`register_traceparent`, :func:`forget_traceparent`,
    :func:`traceparent_of`: their W3C trace contexts.
One request, many ranks
    :func:`run_id`, :func:`request_trace`, :func:`rank_span_id` (ids every rank
    derives alike), :class:`RequestOwner` (the one rank that writes a request's root
    and counts it).
Writing protobuf by hand
    :mod:`protowire` (``varint``, ``tag``, ``field``, ``fixed64``, ``double``): the one
    writer, shared with the Perfetto trace writer.
Trace files (imported on first use)
    :class:`ChromeWriter`, :class:`PerfettoEncoder`, :func:`perfetto_sequence_id`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Iterable, Union

from ._exporter.codec import EventEncoder, decode_events, plain_value
from ._exporter.contexts import forget_traceparent, register_traceparent, request_context, traceparent_of
from ._exporter.exporter import Exporter
from ._exporter.plugin import ExporterPlugin
from ._exporter.processor import ExportProcessor, ExporterUnavailable
from ._exporter.request_trace import RequestOwner, rank_span_id, request_trace, run_id
from . import _protowire as protowire
from ._clock import now_ns, wall_offset_ns
from ._events import BatchEvent, RankInfo, RecordedError, RequestEvent, StageEvent, request_ids
from ._manager import REQUEST as _REQUEST
from ._manager import get_manager as _get_manager
from ._rank import current as current_rank
from ._rank import format_traceparent, host_id, parse_traceparent
from .recorder import DROPPED, BackgroundExporter, EventBuffer

if TYPE_CHECKING:  # the trace-file names load lazily (see __getattr__)
    from .traceio import ChromeWriter, PerfettoEncoder, perfetto_sequence_id

__all__ = [
    "DROPPED", "BackgroundExporter", "BatchEvent", "ChromeWriter", "EventBuffer", "EventEncoder", "ExportProcessor",
    "Exporter", "ExporterPlugin", "ExporterUnavailable", "PerfettoEncoder", "RankInfo", "RecordedError",
    "RequestEvent", "StageEvent", "current_rank", "decode_events", "emit", "forget_traceparent",
    "format_traceparent", "host_id", "is_registered", "now_ns", "parse_traceparent", "perfetto_sequence_id",
    "plain_value", "protowire", "rank_span_id", "register_traceparent", "request_context", "request_ids",
    "request_trace", "RequestOwner", "run_id", "traceparent_of", "wall_offset_ns",
]

_TRACE_FILE_NAMES = frozenset(("ChromeWriter", "PerfettoEncoder", "perfetto_sequence_id"))


def emit(events: Iterable[Union[StageEvent, BatchEvent, Any]]) -> int:
    """Deliver finished events to every plugin's end hook, as if the scheduler had recorded them.

    A :class:`StageEvent` goes to ``sched_trace_stage_end``, a :class:`BatchEvent` to
    ``sched_trace_batch_end``, a ``sched_trace.RequestEvent`` to ``sched_trace_request``. A plugin that raises is counted in
    ``sched_trace.stats()["plugin_errors"]`` and the others still get the event; only a
    value that is not an event raises (``TypeError``). Call it off the scheduler thread (it runs every exporter's hook).
    Give produced events span ids of their own (``parent_id`` 0 puts one on a track
    of its own). Returns the number of events delivered.
    """
    manager = _get_manager()
    count = 0
    for event in events:
        kind = getattr(event, "kind", None)
        if kind == "stage":
            manager.fire(manager.stage_end, event)
        elif kind == "batch":
            manager.fire(manager.batch_end, event)
        elif kind == "request":
            manager.fire(manager.event_calls[_REQUEST], event)
        else:
            raise TypeError(f"emit() takes StageEvent, BatchEvent and RequestEvent objects, not {type(event).__name__}")
        count += 1
    return count


def is_registered(plugin: object) -> bool:
    """True while ``plugin`` (the object given to :func:`sched_trace.register`) is registered."""
    return _get_manager().get_name(plugin) is not None


def __getattr__(name: str) -> Any:
    # Trace-file writers pull in the readers and encoders: only for plugins that write files.
    if name in _TRACE_FILE_NAMES:
        return getattr(importlib.import_module(".traceio", __package__), name)
    raise AttributeError(f"module 'sched_trace.export' has no attribute {name!r}")
