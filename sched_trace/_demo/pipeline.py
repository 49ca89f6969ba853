"""A small pipeline-parallel training job: torch.distributed.pipelining, gloo, CPU.

An ordinary torch program with no tracing code in it. ``sched-trace demo`` runs it
under the ``sched-trace run`` bootstrap, which instruments torch from outside.

Each stage does real work (a small MLP) and then holds the "device" for a fixed
time (``--stage-ms``), the way a GPU kernel would: on a 2-core machine four ranks
doing pure CPU work would fight over cores and blur the pipeline's shape, while
sleeping stages keep it exact. Backward holds twice as long as forward, as it
roughly does on real hardware.

    python -m sched_trace._demo.pipeline --ranks 4 --microbatches 8 --schedules gpipe,1f1b
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed import pipelining

HIDDEN = 16
SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"}


class DeviceTime(torch.autograd.Function):
    """Identity that holds the stage for a fixed time in forward and in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, forward_s: float, backward_s: float) -> torch.Tensor:
        time.sleep(forward_s)
        ctx.backward_s = backward_s
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        time.sleep(ctx.backward_s)
        return grad, None, None


class StageModule(nn.Module):
    """One pipeline stage: Linear + ReLU, then the simulated device time."""

    def __init__(self, forward_ms: float, backward_ms: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.forward_s, self.backward_s = forward_ms / 1e3, backward_ms / 1e3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DeviceTime.apply(self.layer(x), self.forward_s, self.backward_s)


def build_schedule(kind: str, rank: int, ranks: int, microbatches: int,
                   forward_ms: float, backward_ms: float, group: Optional[Any] = None) -> Any:
    """A single-stage-per-rank schedule (GPipe or 1F1B) for this rank."""
    torch.manual_seed(rank)
    stage = pipelining.PipelineStage(
        StageModule(forward_ms, backward_ms), rank, ranks, torch.device("cpu"), group=group
    )
    schedule_class = getattr(pipelining, SCHEDULES[kind])
    return schedule_class(stage, n_microbatches=microbatches, loss_fn=nn.MSELoss())


def train(schedule: Any, rank: int, ranks: int, steps: int, batch: int) -> None:
    """``steps`` iterations: inputs enter at rank 0, targets at the last rank."""
    generator = torch.Generator().manual_seed(0)
    params = [p for stage in [schedule._stage] for p in stage.submod.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01)
    for _ in range(steps):
        inputs = torch.randn(batch, HIDDEN, generator=generator)
        target = torch.randn(batch, HIDDEN, generator=generator)
        optimizer.zero_grad()
        if rank == 0:
            schedule.step(inputs)
        elif rank == ranks - 1:
            schedule.step(target=target, losses=[])
        else:
            schedule.step()
        optimizer.step()


def run_rank(rank: int, ranks: int, port: int, options: dict) -> None:
    """One process of the job: join the gloo group, train with each schedule in turn."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # ranks share the machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)
    try:
        for kind in options["schedules"]:
            schedule = build_schedule(kind, rank, ranks, options["microbatches"],
                                      options["forward_ms"], options["backward_ms"])
            dist.barrier()  # every schedule starts on all ranks together
            train(schedule, rank, ranks, options["steps"], options["batch"])
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4, help="pipeline ranks (processes), 2-4")
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="training steps per schedule")
    parser.add_argument("--schedules", default="gpipe,1f1b", help="comma-separated: gpipe, 1f1b")
    parser.add_argument("--stage-ms", type=float, default=10.0, help="simulated forward time per stage")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    schedules = [name.strip().lower() for name in args.schedules.split(",") if name.strip()]
    unknown = [name for name in schedules if name not in SCHEDULES]
    if unknown or not 2 <= args.ranks <= 8:
        raise SystemExit(f"schedules must be among {sorted(SCHEDULES)} and ranks 2..8; got {unknown or args.ranks}")
    if "1f1b" in schedules and args.microbatches < args.ranks:
        raise SystemExit(f"1F1B needs at least as many micro-batches as ranks ({args.microbatches} < {args.ranks})")
    options = dict(schedules=schedules, microbatches=args.microbatches, steps=args.steps,
                   forward_ms=args.stage_ms, backward_ms=2 * args.stage_ms, batch=2 * args.microbatches)
    mp.spawn(run_rank, args=(args.ranks, free_port(), options), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
