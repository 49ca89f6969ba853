"""A real gloo pipeline whose ranks say they run on two hosts (``SCHED_TRACE_HOST_ID``).

Each spawned rank takes its host id from ``hosts``, configures the
``torch-pipelining`` profile with the Perfetto plugin (and the otel plugin's
OTLP-JSON files when installed), and trains the demo's model with 1F1B. Nothing
in the pipeline code is traced by hand; exit writes the files.
"""

from __future__ import annotations

import os
from typing import Sequence


def run_rank(rank: int, world: int, port: int, hosts: Sequence[str], directory: str, microbatches: int,
             steps: int, stage_ms: float) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), SCHED_TRACE_HOST_ID=hosts[rank])
    os.environ.setdefault("SCHED_TRACE_EXIT_TIMEOUT", "120")  # files are read once the ranks exit
    import sched_trace
    from sched_trace_perfetto import PerfettoPlugin

    plugins: list = [PerfettoPlugin(directory=os.path.join(directory, "perfetto"))]
    try:
        from sched_trace_otel import OtelPlugin
    except ImportError:
        pass
    else:
        plugins.append(OtelPlugin(directory=os.path.join(directory, "otel"), process=False))
    sched_trace.configure(level=2, autoload=False, profile="torch-pipelining", plugins=plugins)

    import torch
    import torch.distributed as dist

    from sched_trace._demo.pipeline import build_schedule, train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    schedule = build_schedule("1f1b", rank, world, microbatches, stage_ms, 2 * stage_ms)
    dist.barrier()
    train(schedule, rank, world, steps, batch=2 * microbatches)
    dist.barrier()
    dist.destroy_process_group()
    sched_trace.shutdown(60)


def run_pipeline(directory: str, hosts: Sequence[str], microbatches: int = 8, steps: int = 5,
                 stage_ms: float = 4.0) -> None:
    import torch.multiprocessing as mp

    from sched_trace._demo.pipeline import free_port

    mp.spawn(run_rank, args=(len(hosts), free_port(), list(hosts), directory, microbatches, steps, stage_ms),
             nprocs=len(hosts), join=True)
