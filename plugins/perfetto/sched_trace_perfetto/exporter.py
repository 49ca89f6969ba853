"""The perfetto exporter: each batch of events encoded and appended to this process's trace file."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from sched_trace.export import Exporter

from .settings import PerfettoSettings
from .sink import TraceSink


class PerfettoExporter(Exporter):
    """Writes through: each batch is in the file when ``export`` returns."""

    def __init__(self, settings: Mapping[str, Any], pid: int, wall_offset_ns: int) -> None:
        self.sink = TraceSink(PerfettoSettings(**settings), pid=pid, wall_offset_ns=wall_offset_ns)

    def export(self, events: Sequence[Any]) -> None:
        self.sink.write(events)

    def shutdown(self, timeout: float) -> None:
        self.sink.close()

    def counters(self) -> dict[str, Any]:
        return {"slices_written": self.sink.slices, "path": self.sink.path}
