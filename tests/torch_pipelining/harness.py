"""Spawned workers for the acceptance tests: trace train_pipeline.py unchanged.

Each rank configures sched-trace with the ``torch-pipelining`` profile and an
in-memory recorder *before* the schedule is built, then runs the training script's
own functions for several schedules in one process group (process start-up is the
expensive part on a small CPU box), and writes, per schedule, the events it recorded
and the compute actions the schedule says this rank runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import sched_trace

COMPUTE = {"F": "F", "B": "B", "I": "I", "W": "W"}


def event_record(event: Any) -> dict[str, Any]:
    return {
        "name": event.name, "kind": event.kind, "start_ns": event.start_ns, "end_ns": event.end_ns,
        "pp_rank": event.rank.pp_rank, "extras": dict(event.rank.extras), "pid": event.rank.pid,
        "microbatch": event.microbatch, "batch_id": event.batch_id, "span_id": event.span_id,
        "parent_id": event.parent_id, "attrs": {k: v for k, v in dict(event.attrs).items()},
        "error": repr(event.error) if event.error is not None else None,
    }


def rank_actions(schedule: Any, rank: int) -> list[list[Any]]:
    """The compute actions this rank runs, in order: [type, stage, microbatch]."""
    order = getattr(schedule, "pipeline_order_with_comms", None) or schedule.pipeline_order
    actions = []
    for action in order[rank]:
        if action is None:
            continue
        for sub in action.sub_actions or (action,):
            kind = sub.computation_type.value
            if kind in COMPUTE:
                actions.append([kind, sub.stage_index, sub.microbatch_index])
    return actions


def run_schedules(
    rank: int, world_size: int, init_method: str, out_dir: str,
    schedules: list[str], steps: int, n_microbatches: int,
) -> None:
    import train_pipeline  # the unmodified training script

    recorder = sched_trace.MemoryRecorder()
    sched_trace.configure(profile="torch-pipelining", plugins=[recorder], autoload=False, level=3)
    train_pipeline.init(rank, world_size, init_method)
    import torch.distributed as dist

    try:
        for name in schedules:
            schedule = train_pipeline.build_schedule(name, rank, world_size, n_microbatches)
            dist.barrier()
            del recorder.events[:]
            train_pipeline.train_steps(schedule, steps)
            events = [event_record(e) for e in recorder.events]
            result = {"events": events, "actions": rank_actions(schedule, rank), "pid": os.getpid(),
                      "schedule_class": type(schedule).__name__}
            with open(os.path.join(out_dir, f"{name}-{rank}.json"), "w") as handle:
                json.dump(result, handle)
            dist.barrier()
    finally:
        dist.destroy_process_group()
        sched_trace.shutdown()
