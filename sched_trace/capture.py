"""Every process's events, gathered in one directory for a test's trace contracts.

A test sets ``SCHED_TRACE_CAPTURE_DIR`` (the ``sched_trace_capture`` fixture does);
each process it starts inherits it, and ``sched_trace.configure()`` there registers a
:class:`CaptureWriter` that appends every finished event to a file of its own in that
directory, as it happens: nothing is buffered, so ranks that exit through
``os._exit`` (multiprocessing children) or are killed lose nothing already recorded.
A forked child writes its own file. :func:`read_directory` reads them all back.

What is written is the event in the one event encoding (``sched_trace.export``'s,
the frames an exporter process reads); attribute values that are live objects are
recorded by type name (``requests`` as request ids), since a trace contract reads
names, nesting, ranks and attribute keys, not payloads.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Optional

from ._exporter.codec import EventEncoder, decode_events
from ._exporter.frames import FrameReader, write_events
from ._events import request_ids

ENV = "SCHED_TRACE_CAPTURE_DIR"
PLUGIN_NAME = "sched-trace-capture"
SUFFIX = ".events"
_PLAIN = (type(None), bool, int, float, str)


class CaptureWriter:
    """A plugin: each finished event, as plain data, appended to this process's file."""

    def __init__(self, directory: "str | os.PathLike[str]") -> None:
        self.directory = str(directory)
        self.written = 0
        self.failed = 0
        self._fd: Optional[int] = None
        self._pid = -1
        self._lock = threading.Lock()

    def sched_trace_batch_end(self, event: Any) -> None:
        self._write(event)

    def sched_trace_stage_end(self, event: Any) -> None:
        self._write(event)

    def sched_trace_request(self, event: Any) -> None:
        self._write(event)

    def sched_trace_collect_stats(self) -> dict[str, int]:
        return {"written": self.written, "failed": self.failed}

    def sched_trace_shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._pid = None, -1

    def _write(self, event: Any) -> None:
        try:
            payload = EventEncoder().encode([plain(event)])
            if self._pid != os.getpid():  # the first event, or the first in a forked child
                self._open()
            with self._lock:
                write_events(self._fd, payload)  # type: ignore[arg-type]
            self.written += 1
        except Exception:  # a test harness must not break the traced program either
            self.failed += 1

    def _open(self) -> None:
        # A fresh lock too: a fork may have copied the parent's while another thread held it.
        self._lock = threading.Lock()
        os.makedirs(self.directory, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        self._fd = os.open(os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._pid = os.getpid()


def plain(event: Any) -> Any:
    """The event with live values (attributes, a micro-batch object) replaced by what a
    contract may compare: type names, and request ids for ``requests``."""
    if event.kind != "request" and type(event.microbatch) not in _PLAIN:
        event = event._replace(microbatch=f"<{type(event.microbatch).__name__}>")
    attrs = event.attrs
    if all(type(value) in _PLAIN for value in attrs.values()):
        return event
    kept = {}
    for key, value in attrs.items():
        if type(value) in _PLAIN:
            kept[key] = value
        elif key == "requests":
            kept[key] = tuple(request_ids(value))
        else:
            kept[key] = f"<{type(value).__name__}>"
    return event._replace(attrs=MappingProxyType(kept))


def install_from_env(manager: Any) -> Optional[CaptureWriter]:
    """Register a writer when ``SCHED_TRACE_CAPTURE_DIR`` is set and none is registered."""
    directory = os.environ.get(ENV)
    if not directory or manager.get_plugin(PLUGIN_NAME) is not None or manager.is_blocked(PLUGIN_NAME):
        return None
    writer = CaptureWriter(directory)
    manager.register(writer, name=PLUGIN_NAME)
    return writer


def read_directory(directory: "str | os.PathLike[str]") -> tuple[list[Any], list[str]]:
    """Every event written under ``directory``, and a note per file that ended early."""
    events: list[Any] = []
    notes: list[str] = []
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        try:
            events.extend(_frames(path))
        except Exception as exc:  # a damaged file: keep what came before, say where
            notes.append(f"{path.name}: unreadable after {len(events)} events ({type(exc).__name__}: {exc})")
    return events, notes


def _frames(path: Path) -> Iterator[Any]:
    with path.open("rb") as stream:
        reader = FrameReader(stream.fileno())
        while True:
            frame = reader.read()
            if frame is None:
                if reader.pending:
                    raise EOFError(f"{reader.pending} bytes of a frame cut short at the end")
                return
            yield from decode_events(frame[1])
