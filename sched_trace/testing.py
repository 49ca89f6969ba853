"""For tests, yours and ours: a recorder that keeps every event, and a real OTLP receiver.

    from sched_trace.testing import MemoryRecorder, OtlpReceiver

    recorder = MemoryRecorder()
    sched_trace.configure(plugins=[recorder], autoload=False)
    ...
    assert [e.microbatch for e in recorder.by_stage("forward")] == [0, 1, 2]

    with OtlpReceiver("grpc") as receiver:     # or "http"; mode = "503", "hang", "refuse" ...
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.endpoint
        ...
        assert receiver.wait_for(lambda r: "run_batch" in r.names())

The pytest plugin's ``sched_trace_recorder`` fixture is a :class:`MemoryRecorder`.
:class:`OtlpReceiver` needs ``opentelemetry-proto`` (and ``grpcio`` for gRPC):
``pip install sched-trace[testing]``; they are imported only when a receiver starts.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Optional

from ._otlp_receiver import OtlpReceiver, span_attributes
from ._events import BatchEvent, RequestEvent, StageEvent

__all__ = ["MemoryRecorder", "OtlpReceiver", "span_attributes"]


class MemoryRecorder:
    """A plugin that keeps every event in memory: for tests, demos and notebooks.

    Not for production: it grows without bound unless ``capacity`` is set, in which
    case further events are dropped and counted.
    """

    def __init__(self, capacity: Optional[int] = None, *, starts: bool = False) -> None:
        self.events: list[Any] = []
        self.request_events: list[RequestEvent] = []
        self.capacity = capacity
        self.dropped = 0
        self._lock = threading.Lock()
        if starts:
            self.sched_trace_batch_start = self._record  # type: ignore[attr-defined]
            self.sched_trace_stage_start = self._record  # type: ignore[attr-defined]

    def _record(self, event: Any) -> None:
        if self.capacity is not None and len(self.events) >= self.capacity:
            self.dropped += 1
            return
        self.events.append(event)

    def sched_trace_batch_end(self, event: BatchEvent) -> None:
        self._record(event)

    def sched_trace_stage_end(self, event: StageEvent) -> None:
        self._record(event)

    def sched_trace_request(self, event: RequestEvent) -> None:
        # Kept apart from ``events`` (spans), which the pipeline analysis reads as stages.
        if self.capacity is not None and len(self.request_events) >= self.capacity:
            self.dropped += 1
            return
        self.request_events.append(event)

    def sched_trace_collect_stats(self) -> dict[str, int]:
        return {"recorded": len(self.events) + len(self.request_events), "dropped": self.dropped}

    # --- queries ---------------------------------------------------------------

    def requests(self, request_id: Optional[str] = None, phase: Optional[str] = None) -> list[RequestEvent]:
        """Request events, optionally of one request and/or one phase, in arrival order."""
        return [e for e in self.request_events
                if (request_id is None or e.request_id == request_id) and (phase is None or e.phase == phase)]

    def stages(self, name: Optional[str] = None) -> list[StageEvent]:
        return [e for e in self.events if e.kind == "stage" and (name is None or e.name == name)]

    def batches(self, name: Optional[str] = None) -> list[BatchEvent]:
        return [e for e in self.events if e.kind == "batch" and (name is None or e.name == name)]

    def by_stage(self, name: str) -> list[Any]:
        return [e for e in self.events if e.name == name]

    def by_rank(self, **ranks: Any) -> list[Any]:
        """Events whose rank matches every key given (``pp_rank=1``, ``thread_label=...``)."""
        def matches(event: Any) -> bool:
            extras = None
            for key, value in ranks.items():
                if hasattr(event.rank, key) and key != "extra":
                    if getattr(event.rank, key) != value:
                        return False
                else:
                    extras = extras if extras is not None else event.rank.extras
                    if extras.get(key) != value:
                        return False
            return True
        return [e for e in self.events if matches(e)]

    def by_microbatch(self, microbatch: Any) -> list[Any]:
        return [e for e in self.events if e.microbatch == microbatch]

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def clear(self) -> None:
        self.events.clear()
        self.request_events.clear()
        self.dropped = 0
