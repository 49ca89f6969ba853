"""Hand-built traces: a two-rank pipeline step with micro-batches, and request lifecycles."""

from __future__ import annotations

from itertools import count
from types import MappingProxyType
from typing import Any, Optional

from sched_trace._events import BatchEvent, RankInfo, RequestEvent, StageEvent

_ids = count(1)


def rank(pp: Optional[int] = None, pid: int = 100, **extra: Any) -> RankInfo:
    return RankInfo("host", pid + (pp or 0), 1, "MainThread", pp_rank=pp, extra=tuple(sorted(extra.items())))


def span(kind: str, name: str, where: RankInfo, start: int, parent: int = 0, level: int = 2,
         microbatch: Any = None, **attrs: Any) -> Any:
    cls = BatchEvent if kind == "batch" else StageEvent
    return cls(name, level, start, start + 10, where, microbatch, 7, None, MappingProxyType(attrs), None,
               next(_ids), parent)


def pipeline(ranks: int = 2, steps: int = 2, microbatches: int = 4, drop: Any = None) -> list[Any]:
    """pp_step > pp_forward (micro-batches 0..n-1) on each rank; ``drop(pp, step, mb)`` leaves one out."""
    events = []
    for pp in range(ranks):
        for step in range(steps):
            batch = span("batch", "pp_step", rank(pp), 1000 * step, level=1, schedule="1F1B")
            for mb in range(microbatches):
                if drop is None or not drop(pp, step, mb):
                    events.append(span("stage", "pp_forward", rank(pp, stage_index=pp), batch.start_ns + mb,
                                       parent=batch.span_id, microbatch=mb))
            events.append(batch)
    return events


def lifecycle(request_id: str, phases: tuple[str, ...] = ("arrived", "queued", "scheduled", "first_token", "finished"),
              where: Optional[RankInfo] = None, start: int = 0) -> list[RequestEvent]:
    return [RequestEvent(phase, start + n, request_id, where or rank(0), 8, None, None, MappingProxyType({}))
            for n, phase in enumerate(phases)]
