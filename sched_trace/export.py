"""The plugin-author surface: everything an exporter plugin may import besides ``sched_trace``.

Third-party plugins (and the built-in ones under ``plugins/``) import from here and
from the top-level :mod:`sched_trace` API only; every name below is kept stable and
documented in docs/plugins.md. ``tests/test_plugin_surface.py`` fails on a built-in
plugin that reaches past it.

Off the scheduler thread
    :class:`BackgroundExporter` (bounded buffer + exporter thread; the hook appends),
    :class:`EventBuffer` (the bounded buffer alone).
Producing events
    :func:`emit` delivers events a plugin made itself (GPU time, say) to every other
    plugin, guarded per plugin; :func:`is_registered` says whether a plugin is in.
An exporter process
    :class:`ExporterProcess` (subclass it in the scheduler process) and, in the child,
    :func:`worker_main`, :func:`read_frame`, :func:`reply`, :func:`write_frame`.
Identity and clocks
    :func:`current_rank`, :func:`host_id`, :func:`wall_offset_ns`, :func:`now_ns`,
    :func:`parse_traceparent`, :func:`format_traceparent`.
What may be recorded
    :func:`request_ids`: a ``requests`` attribute as ids only, never payloads.
Trace files (imported on first use)
    :class:`ChromeWriter`, :class:`PerfettoEncoder`, :func:`perfetto_sequence_id`,
    :class:`RecordedError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Iterable, Union

from .clock import now_ns, wall_offset_ns
from .events import BatchEvent, RankInfo, StageEvent, request_ids
from .exporter_process import ExporterProcess, read_frame, reply, worker_main, write_frame
from .plugins import REQUEST as _REQUEST
from .plugins import get_manager as _get_manager
from .rank import current as current_rank
from .rank import format_traceparent, host_id, parse_traceparent
from .recorder import BackgroundExporter, EventBuffer

if TYPE_CHECKING:  # the trace-file names load lazily (see __getattr__)
    from .traceio import ChromeWriter, PerfettoEncoder, RecordedError, perfetto_sequence_id

__all__ = [
    "BackgroundExporter", "BatchEvent", "ChromeWriter", "EventBuffer", "ExporterProcess",
    "PerfettoEncoder", "RankInfo", "RecordedError", "StageEvent", "current_rank", "emit",
    "format_traceparent", "host_id", "is_registered", "now_ns", "parse_traceparent",
    "perfetto_sequence_id", "read_frame", "reply", "request_ids", "wall_offset_ns", "worker_main", "write_frame",
]

_TRACE_FILE_NAMES = frozenset(("ChromeWriter", "PerfettoEncoder", "RecordedError", "perfetto_sequence_id"))


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
