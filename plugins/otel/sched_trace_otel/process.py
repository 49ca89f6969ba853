"""The scheduler process's handle on its otel exporter process: what the frames hold.

Start, restart, flush, stop and loss counting are :mod:`sched_trace.exporter_process`'s.
The child gets the settings and process metadata, then every rank announced so
far (a restarted child must know them), then ``events`` frames of records.
"""

from __future__ import annotations

import random
from typing import Any

from sched_trace.export import ExporterProcess as _Base

from .settings import OtelSettings


class ExporterProcess(_Base):
    worker_module = "sched_trace_otel.worker"
    label = "otel"
    live_only_keys = frozenset(("queued", "spans_waiting"))

    def __init__(self, settings: OtelSettings, meta: dict[str, Any]) -> None:
        self.settings = settings
        self.meta = meta
        self.ranks: dict[int, dict[str, Any]] = {}   # every rank announced, resent to a new child
        super().__init__(settings.restart_limit)

    def _init_frames(self) -> list:
        frames: list = [("init", self.settings.as_dict(), self.meta)]
        if self.ranks:
            frames.append(("events", sorted(self.ranks.items()), []))
        return frames

    def _processed(self, counters: dict[str, Any]) -> int:
        return counters.get("records", 0) + counters.get("queue_dropped", 0)

    def _flush_frame(self, seq: int, remaining: float) -> Any:
        # The child gets less time than we wait, so its ack (with counters) still reaches us.
        return ("flush", seq, max(0.05, 0.7 * remaining))

    def _stop_frame(self, timeout: float) -> Any:
        return ("stop", timeout)

    def _forked(self) -> None:
        from .pipeline import process_meta

        # Span ids continue from the parent's counter after fork: a new salt keeps them unique.
        self.meta = process_meta(self.settings, self._pid, random.getrandbits(31) | (1 << 31))
        self.ranks = {}

    def send(self, new_ranks: list, records: list) -> bool:  # type: ignore[override]
        """Called on the exporter thread; False when no exporter process could take them."""
        for index, attrs in new_ranks:  # only this thread sends (and so starts children)
            self.ranks[index] = attrs
        return super().send(("events", new_ranks, records), len(records))
