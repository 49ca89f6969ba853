"""Spawned gloo ranks for the acceptance tests: the demo's pipeline, traced from outside.

Each rank configures sched-trace with an in-memory recorder and the shipped
``torch-pipelining`` profile and runs every (schedule, p, m) configuration. Two
witnesses that do not go through sched-trace watch the same run:

* an **oracle**: wrapt wrappers installed *beneath* sched-trace's (before the
  profile patches the same methods) that read the monotonic clock around every
  forward, backward and ``step()``;
* a **spy** on the stage object that logs the forward/backward calls the schedule
  made, next to the plan torch's schedule reports (``pipeline_order``).

The events travel as they are: ``torch.distributed.gather_object`` pickles them
to rank 0, which writes what it gathered (with a digest of each rank's events
taken before sending) to one file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from typing import Any

import sched_trace

LETTERS = {"FORWARD": "F", "FULL_BACKWARD": "B", "BACKWARD_INPUT": "B", "BACKWARD_WEIGHT": "W"}
ORACLE_TARGETS = (
    ("torch.distributed.pipelining.stage", "_PipelineStageBase.forward_one_chunk", "F"),
    ("torch.distributed.pipelining.stage", "_PipelineStageBase.backward_one_chunk", "B"),
    ("torch.distributed.pipelining.schedules", "PipelineScheduleSingle.step", "step"),
)


class Oracle:
    """Its own clock readings ``(kind, chunk, start_ns, end_ns)`` of each forward, backward and step."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, Any, int, int]] = []

    def install(self) -> None:
        import wrapt

        for module, name, kind in ORACLE_TARGETS:
            wrapt.wrap_function_wrapper(module, name, self._timer(kind))

    def _timer(self, kind: str) -> Any:
        readings = self.readings

        def timed(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            start = time.monotonic_ns()
            try:
                return wrapped(*args, **kwargs)
            finally:
                chunk = None if kind == "step" else (args[0] if args else next(iter(kwargs.values()), None))
                readings.append((kind, chunk, start, time.monotonic_ns()))

        return timed


def digest(events: list) -> str:
    """What a rank's events looked like before they were pickled: compared after the trip."""
    return hashlib.sha256(repr(events).encode()).hexdigest()


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
    import torch.distributed.pipelining.schedules  # noqa: F401  (the oracle patches it first)

    from sched_trace import _clock as clock
    from sched_trace._demo.pipeline import build_schedule, train

    oracle = Oracle()
    oracle.install()
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
        oracle.readings.clear()
        if rank < p:
            train(schedule, rank, p, options["steps"], batch=2 * m)
        dist.barrier()
        events = list(recorder.events)
        results.append(dict(kind=kind, p=p, m=m, planned=planned, executed=executed, events=events,
                            digest=digest(events), oracle=list(oracle.readings),
                            offset_ns=clock.wall_offset_ns()))
    gathered: Any = [None] * world if rank == 0 else None
    dist.gather_object(results, gathered, dst=0)
    dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(out_dir, "gathered.pkl"), "wb") as handle:
            pickle.dump(gathered, handle)


def run_ranks(world: int, configs: list, options: dict, out_dir: str) -> dict[tuple, dict]:
    """Spawn ``world`` ranks; per (kind, p, m): every rank's events, oracle readings and call orders."""
    import torch.multiprocessing as mp

    from sched_trace._demo.pipeline import free_port

    mp.spawn(traced_rank, args=(world, free_port(), configs, options, out_dir), nprocs=world, join=True)
    with open(os.path.join(out_dir, "gathered.pkl"), "rb") as handle:
        gathered = pickle.load(handle)
    merged: dict[tuple, dict] = {}
    for rank, results in enumerate(gathered):
        for result in results:
            entry = merged.setdefault((result["kind"], result["p"], result["m"]),
                                      dict(events=[], planned={}, executed={}, oracle={}, digests={}))
            entry["events"].extend(result["events"])
            entry["digests"][rank] = (result["digest"], digest(result["events"]))
            if result["planned"]:
                entry["planned"][rank] = result["planned"]
                entry["executed"][rank] = result["executed"]
                # On the events' clock: monotonic readings plus the rank's own offset.
                entry["oracle"][rank] = [(kind, chunk, start + result["offset_ns"], end + result["offset_ns"])
                                         for kind, chunk, start, end in result["oracle"]]
    return merged
