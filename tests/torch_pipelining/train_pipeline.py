"""An ordinary pipeline-parallel training script (gloo, CPU): no tracing code in it.

Run by itself: ``python train_pipeline.py --world-size 2 --schedule 1F1B``. The
acceptance tests trace it without edits, through ``configure(profile=...)`` in a
worker before the schedule is built, or through ``sched-trace run --profile``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import pipelining

HIDDEN = 8
BATCH = 8
#: schedule name -> (class, stages per rank, stage-to-rank style)
SCHEDULES: dict[str, tuple[str, int, str]] = {
    "GPipe": ("ScheduleGPipe", 1, "loop"),
    "1F1B": ("Schedule1F1B", 1, "loop"),
    "Interleaved1F1B": ("ScheduleInterleaved1F1B", 2, "loop"),
    "LoopedBFS": ("ScheduleLoopedBFS", 2, "loop"),
    "InterleavedZeroBubble": ("ScheduleInterleavedZeroBubble", 2, "loop"),
    "ZBVZeroBubble": ("ScheduleZBVZeroBubble", 2, "v"),
    "DualPipeV": ("ScheduleDualPipeV", 2, "v"),
}


def stage_indices(rank: int, world_size: int, per_rank: int, style: str) -> list[int]:
    """Which global stages this rank holds: looped (r, r+W, ...) or V (r, 2W-1-r)."""
    if per_rank == 1:
        return [rank]
    if style == "v":
        return [rank, 2 * world_size - 1 - rank]
    return [rank + k * world_size for k in range(per_rank)]


def build_schedule(name: str, rank: int, world_size: int, n_microbatches: int) -> Any:
    class_name, per_rank, style = SCHEDULES[name]
    num_stages = world_size * per_rank
    torch.manual_seed(0)
    stages = []
    for index in stage_indices(rank, world_size, per_rank, style):
        submodule = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        stages.append(pipelining.PipelineStage(submodule, index, num_stages, torch.device("cpu")))
    schedule_class = getattr(pipelining, class_name)
    loss_fn: Callable[..., torch.Tensor] = nn.MSELoss()
    if per_rank == 1:
        return schedule_class(stages[0], n_microbatches=n_microbatches, loss_fn=loss_fn)
    return schedule_class(stages, n_microbatches=n_microbatches, loss_fn=loss_fn)


def holds_first_stage(schedule: Any) -> bool:
    stages = getattr(schedule, "_stages", None) or [schedule._stage]
    return any(stage.is_first for stage in stages)


def train_steps(schedule: Any, steps: int) -> None:
    """Run ``steps`` iterations: inputs go to the first stage, targets to the last."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        inputs = torch.randn(BATCH, HIDDEN, generator=generator)
        target = torch.randn(BATCH, HIDDEN, generator=generator)
        args = (inputs,) if holds_first_stage(schedule) else ()
        schedule.step(*args, target=target, losses=[])


def init(rank: int, world_size: int, init_method: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)


def worker(rank: int, world_size: int, init_method: str, schedule: str, steps: int, n_microbatches: int) -> None:
    init(rank, world_size, init_method)
    try:
        train_steps(build_schedule(schedule, rank, world_size, n_microbatches), steps)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="1F1B")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--microbatches", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        init_method = "file://" + os.path.join(scratch, "rendezvous")
        torch.multiprocessing.spawn(
            worker,
            args=(args.world_size, init_method, args.schedule, args.steps, args.microbatches),
            nprocs=args.world_size,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
