"""A real torch.distributed.pipelining rank (gloo, CPU), traced by the profile into files.

No sched-trace call touches the pipeline code: the ``torch-pipelining`` profile
instruments torch, the Perfetto plugin writes this process's file, and exit writes it.
"""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_rank(rank: int, world: int, port: int, directory: str, schedule_name: str,
             microbatches: int, steps: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.setdefault("SCHED_TRACE_EXIT_TIMEOUT", "120")  # files are read once the ranks exit
    import sched_trace
    from sched_trace_perfetto import PerfettoPlugin

    sched_trace.configure(level=2, autoload=False, profile="torch-pipelining",
                          plugins=[PerfettoPlugin(directory=directory)])

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed import pipelining

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    stage = pipelining.PipelineStage(nn.Linear(4, 4), rank, world, torch.device("cpu"))
    schedule = getattr(pipelining, schedule_name)(stage, n_microbatches=microbatches, loss_fn=nn.MSELoss())
    for _ in range(steps):
        if rank == 0:
            schedule.step(torch.randn(2 * microbatches, 4))
        elif rank == world - 1:
            schedule.step(target=torch.randn(2 * microbatches, 4), losses=[])
        else:
            schedule.step()
    dist.barrier()
    dist.destroy_process_group()
