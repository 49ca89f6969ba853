"""Exact pipeline timelines for the analysis tests: a dependency-driven simulator.

Each rank runs its schedule's actions in order; an action starts when the rank is
free and its input is there (forward: the same micro-batch's forward on the
previous stage; backward: the next stage's backward, or on the last stage its own
forward). With balanced stages this is the textbook picture the theory describes.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

from sched_trace import BatchEvent, RankInfo, StageEvent
from sched_trace._events import NO_ATTRS

MS = 1_000_000
_span_ids = itertools.count(1)


def gpipe_order(p: int, m: int, rank: int) -> list[tuple[str, int]]:
    return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]


def one_f_one_b_order(p: int, m: int, rank: int) -> list[tuple[str, int]]:
    """What torch's Schedule1F1B runs: p - rank warm-up forwards, then B/F pairs."""
    warmup = min(m, p - rank)
    order = [("F", i) for i in range(warmup)]
    forward = warmup
    for backward in range(m):
        order.append(("B", backward))
        if forward < m:
            order.append(("F", forward))
            forward += 1
    return order


def rank_info(rank: int, pid: Optional[int] = None) -> RankInfo:
    return RankInfo("host", pid if pid is not None else 1000 + rank, 1, "MainThread", pp_rank=rank)


def stage_event(name: str, start: int, end: int, rank: int, microbatch: Any = None,
                batch_id: Optional[int] = None, parent_id: int = 0, **attrs: Any) -> StageEvent:
    return StageEvent(name, 2, start, end, rank_info(rank), microbatch, batch_id, None,
                      attrs or NO_ATTRS, None, next(_span_ids), parent_id)


def batch_event(name: str, start: int, end: int, rank: int, batch_id: int, **attrs: Any) -> BatchEvent:
    return BatchEvent(name, 1, start, end, rank_info(rank), None, batch_id, None,
                      attrs or NO_ATTRS, None, next(_span_ids), 0)


def simulate(p: int, m: int, order=gpipe_order, steps: int = 1, forward_ms: float = 10,
             backward_ms: float = 20, schedule: str = "ScheduleGPipe", gap_ms: float = 0,
             slow: Optional[dict] = None, start_ns: int = 0) -> list:
    """Events of ``steps`` consecutive steps; each rank enters the next step as soon as it left this one.

    ``slow`` maps a rank to a factor on its stage times (an unbalanced pipeline);
    ``gap_ms`` is host time each rank spends between its steps (an optimizer step).
    """
    slow = slow or {}
    free = [start_ns] * p  # when each rank is next free
    events: list = []
    for step in range(steps):
        batch_id = step + 1
        starts = list(free)
        done: dict[tuple[str, int, int], int] = {}
        queues = [list(order(p, m, r)) for r in range(p)]
        while any(queues):
            progressed = False
            for r in range(p):
                if not queues[r]:
                    continue
                kind, mb = queues[r][0]
                need = ("F", r - 1, mb) if kind == "F" else (("B", r + 1, mb) if r < p - 1 else ("F", r, mb))
                if kind == "F" and r == 0:
                    ready = free[r]
                elif need not in done:
                    continue
                else:
                    ready = done[need]
                start = max(free[r], ready)
                end = start + int((forward_ms if kind == "F" else backward_ms) * slow.get(r, 1.0) * MS)
                name = "pp_forward" if kind == "F" else "pp_backward"
                events.append(stage_event(name, start, end, r, mb, batch_id))
                done[(kind, r, mb)] = free[r] = end
                queues[r].pop(0)
                progressed = True
            assert progressed, "schedule deadlocked"
        for r in range(p):
            events.append(batch_event("pp_step", starts[r], free[r], r, batch_id,
                                      schedule=schedule, n_microbatches=m))
            free[r] += int(gap_ms * MS)
    return events
