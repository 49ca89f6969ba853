"""Spawned ranks for the acceptance test: the demo's pipeline, traced from outside.

Each rank configures sched-trace with an in-memory recorder and the shipped
``torch-pipelining`` profile, runs every (schedule, p, m) configuration, and pickles its
events, the forward/backward calls the schedule made (logged by a spy on the
stage object, independent of sched-trace) and the plan torch's schedule reports
(``pipeline_order``).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import sched_trace

LETTERS = {"FORWARD": "F", "FULL_BACKWARD": "B", "BACKWARD_INPUT": "B", "BACKWARD_WEIGHT": "W"}


def portable(event: Any) -> Any:
    """The event without what does not pickle (mapping proxies, exceptions)."""
    return event._replace(attrs=dict(event.attrs), error=None if event.error is None else repr(event.error))


def planned_order(schedule: Any, stage_index: int) -> list[tuple[str, int]]:
    """The schedule's own action list for this stage (torch's ``pipeline_order``)."""
    actions = schedule.pipeline_order[stage_index]
    return [(LETTERS[a.computation_type.name], a.microbatch_index)
            for a in actions if a is not None and a.computation_type.name in LETTERS]


def spy_on_calls(stage: Any, calls: list) -> None:
    """Log every forward/backward call the schedule makes, independently of sched-trace."""
    for letter, method in (("F", "forward_one_chunk"), ("B", "backward_one_chunk")):
        bound = getattr(stage, method)

        def spy(chunk_id: int, *args: Any, _bound: Any = bound, _letter: str = letter, **kwargs: Any) -> Any:
            calls.append((_letter, chunk_id))
            return _bound(chunk_id, *args, **kwargs)

        setattr(stage, method, spy)


def traced_rank(rank: int, world: int, port: int, configs: list, options: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from sched_trace._demo.pipeline import build_schedule, train

    recorder = sched_trace.MemoryRecorder()
    sched_trace.configure(level=9, plugins=[recorder], autoload=False, profile="torch-pipelining")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups = {p: dist.new_group(list(range(p))) for p in sorted({c[1] for c in configs})}
    results = []
    for kind, p, m in configs:
        planned: list = []
        executed: list = []
        if rank < p:
            schedule = build_schedule(kind, rank, p, m, options["forward_ms"], options["backward_ms"], group=groups[p])
            planned = planned_order(schedule, rank)
            spy_on_calls(schedule._stage, executed)
        dist.barrier()
        recorder.clear()
        if rank < p:
            train(schedule, rank, p, options["steps"], batch=2 * m)
        dist.barrier()
        results.append(dict(kind=kind, p=p, m=m, planned=planned, executed=executed,
                            events=[portable(e) for e in recorder.events]))
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
        pickle.dump(results, handle)


def run_ranks(world: int, configs: list, options: dict, out_dir: str) -> dict[tuple, dict]:
    """Spawn ``world`` ranks; per (kind, p, m): every rank's events and schedule orders."""
    import torch.multiprocessing as mp

    from sched_trace._demo.pipeline import free_port

    mp.spawn(traced_rank, args=(world, free_port(), configs, options, out_dir), nprocs=world, join=True)
    merged: dict[tuple, dict] = {}
    for rank in range(world):
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as handle:
            for result in pickle.load(handle):
                entry = merged.setdefault((result["kind"], result["p"], result["m"]),
                                          dict(events=[], planned={}, executed={}))
                entry["events"].extend(result["events"])
                if result["planned"]:
                    entry["planned"][rank] = result["planned"]
                    entry["executed"][rank] = result["executed"]
    return merged
