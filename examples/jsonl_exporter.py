"""An exporter plugin in one class: every event as a JSON line, written from its own process.

docs/plugins.md shows this file; tests/plugins/test_one_class_exporter.py runs it.
"""

from __future__ import annotations

import json
import os

from sched_trace.export import Exporter


class JsonLinesExporter(Exporter):
    """Appends one JSON line per event to ``path``, written through at each batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def export(self, events):
        lines = []
        for event in events:  # read by field name, whatever ran the exporter
            if event.kind == "request":
                lines.append({"request": event.request_id, "phase": event.phase, "ts_ns": event.ts_ns})
            else:
                lines.append({"name": event.name, "rank": event.rank.track_name, "microbatch": event.microbatch,
                              "start_ns": event.start_ns, "end_ns": event.end_ns, "attrs": dict(event.attrs)})
        os.write(self._fd, "".join(json.dumps(line) + "\n" for line in lines).encode())
        self.written += len(lines)

    def shutdown(self, timeout):
        os.close(self._fd)

    def counters(self):
        return {"exported": self.written, "exporter_pid": os.getpid()}
