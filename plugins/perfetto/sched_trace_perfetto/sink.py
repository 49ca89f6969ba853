"""One trace file per process, appended to batch by batch (exporter thread or exporter process).

Writes go straight to the file descriptor (no user-space buffer), so what was
exported is on disk at once, and a forked child that drops its parent's sink
cannot write the parent's bytes a second time.
"""

from __future__ import annotations

import io
import os
import re
import time
from typing import Any, Optional, Sequence

from sched_trace.export import ChromeWriter, PerfettoEncoder, perfetto_sequence_id
from sched_trace.export import wall_offset_ns as _wall_offset_ns

from .settings import PerfettoSettings


def process_rank(event: Any) -> Optional[int]:
    """The process's global rank: torch.distributed / RANK as the core detected it."""
    rank = event.rank.extras.get("rank")
    if rank is None:
        raw = os.environ.get("RANK", "")
        rank = int(raw) if raw.isdigit() else None
    return rank


def file_name(settings: PerfettoSettings, host: str, pid: int, rank: Optional[int]) -> str:
    safe_host = re.sub(r"[^A-Za-z0-9_.-]", "_", host)
    return f"sched-trace-{safe_host}-rank{rank if rank is not None else 0}-pid{pid}{settings.suffix}"


def _unused(path: str) -> str:
    # configure() after shutdown() in one process starts a second file, never overwrites.
    stem, suffix = path[: -len(".perfetto-trace")], ".perfetto-trace"
    if path.endswith(".json"):
        stem, suffix = path[:-5], ".json"
    candidate, number = path, 1
    while os.path.exists(candidate):
        candidate = f"{stem}-{number}{suffix}"
        number += 1
    return candidate


class TraceSink:
    """Opens its file on the first batch (the rank is known by then) and appends to it.

    ``pid`` and ``wall_offset_ns`` are the traced process's; an exporter process
    passes its parent's, so the file is named and clocked as the writer thread's was.
    """

    def __init__(self, settings: PerfettoSettings, pid: Optional[int] = None,
                 wall_offset_ns: Optional[int] = None) -> None:
        self.settings = settings
        self.pid = os.getpid() if pid is None else pid
        self.offset = _wall_offset_ns() if wall_offset_ns is None else wall_offset_ns
        self.path: Optional[str] = None
        self.slices = 0
        self._fd: Optional[int] = None
        self._encoder: Optional[PerfettoEncoder] = None
        self._chrome: Optional[ChromeWriter] = None
        self._text = io.StringIO()

    def _open(self, first: Any) -> None:
        settings = self.settings
        os.makedirs(settings.directory, exist_ok=True)
        host, rank = first.rank.host_id, process_rank(first)
        self.path = _unused(os.path.join(settings.directory, file_name(settings, host, self.pid, rank)))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        offsets = {(host, self.pid): self.offset}
        if settings.format == "chrome":
            world = first.rank.extras.get("world_size")
            self._chrome = ChromeWriter(self._text, rank=rank, world_size=world, clock_offsets=offsets,
                                        counter_attrs=settings.counters, flows=settings.flows,
                                        track_keys=settings.track_keys)
            self._write_text()
        else:
            self._encoder = PerfettoEncoder(perfetto_sequence_id(host, self.pid),
                                            counter_attrs=settings.counters, flows=settings.flows,
                                            track_keys=settings.track_keys)
            self._encoder.clock_offsets = offsets
            # One host, one monotonic clock: the traced process's offset applies here too.
            self._write(self._encoder.clock_snapshot(self.offset, time.monotonic_ns() + self.offset))

    def write(self, events: Sequence[Any]) -> None:
        if not events:
            return
        if self._fd is None:
            self._open(events[0])
        if self._chrome is not None:
            self._chrome.write(events)
            self._write_text()
        else:
            assert self._encoder is not None
            self._write(self._encoder.encode(events))
        self.slices += sum(1 for e in events if e.end_ns is not None)

    def _write_text(self) -> None:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        self._write(data)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        if self._fd is None:
            return
        if self._chrome is not None:
            self._chrome.close()
            self._write_text()
        os.close(self._fd)
        self._fd = None
