"""Measured bubble ratio of real torch.distributed.pipelining runs against theory.

Spawned gloo ranks (CPU) train the demo's model with GPipe and 1F1B, traced by the
``torch-pipelining`` profile; stages hold their "device" for 20 ms forward and
40 ms backward, so every stage is balanced and the textbook figure
(p-1)/(m+p-1) applies. The ranks' events come back through ``gather_object``;
``pipeline_report(events, skip_steps=1)`` gives the measured ratio (the median
over steps). Real runs sit above theory: every P2P hop on the critical path
costs time, and on a shared machine a stage slowed by a neighbour delays every
rank after it. This is a figure, not a test: the tests compare the report with an
oracle's clock readings of the same run instead (tests/analysis/test_torch_bubbles.py).
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
from typing import Any

from .harness import row

CONFIGS = (("gpipe", 2, 4), ("1f1b", 2, 4), ("gpipe", 4, 4), ("1f1b", 4, 4), ("gpipe", 4, 8), ("1f1b", 4, 8))
QUICK_CONFIGS = (("gpipe", 2, 4), ("1f1b", 4, 8))
FORWARD_MS, BACKWARD_MS = 20, 40


def rank_main(rank: int, world: int, port: int, configs: tuple, steps: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    import sched_trace
    from sched_trace._demo.pipeline import build_schedule, train

    recorder = sched_trace.MemoryRecorder()
    sched_trace.configure(level=9, plugins=[recorder], autoload=False, profile="torch-pipelining")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups = {p: dist.new_group(list(range(p))) for p in sorted({c[1] for c in configs})}
    events: dict[tuple, list] = {}
    for kind, p, m in configs:
        schedule = build_schedule(kind, rank, p, m, FORWARD_MS, BACKWARD_MS, group=groups[p]) if rank < p else None
        dist.barrier()
        recorder.clear()
        if schedule is not None:
            train(schedule, rank, p, steps, batch=2 * m)
        dist.barrier()
        events[(kind, p, m)] = list(recorder.events)
    gathered: Any = [None] * world if rank == 0 else None
    dist.gather_object(events, gathered, dst=0)
    dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(out_dir, "events.pkl"), "wb") as handle:
            pickle.dump(gathered, handle)


def measure(configs: tuple, steps: int) -> dict[tuple, list]:
    """Every rank's events per configuration, gathered on rank 0."""
    import torch.multiprocessing as mp

    from sched_trace._demo.pipeline import free_port

    world = max(p for _, p, _ in configs)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(rank_main, args=(world, free_port(), configs, steps, out_dir), nprocs=world, join=True)
        with open(os.path.join(out_dir, "events.pkl"), "rb") as handle:
            gathered = pickle.load(handle)
    return {config: [e for per_rank in gathered for e in per_rank[config]] for config in configs}


def run(quick: bool) -> list[dict[str, Any]]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return [row("pipeline bubble ratio vs theory", 0.0, None, None, "ratio", note="torch not installed")]
    from sched_trace.analysis import gpipe_bubble_fraction, pipeline_report

    configs = QUICK_CONFIGS if quick else CONFIGS
    steps = 3 if quick else 5
    rows = []
    for (kind, p, m), events in measure(configs, steps).items():
        report = pipeline_report(events, skip_steps=1)
        measured = statistics.median(step.bubble_ratio for step in report.steps)
        theory = gpipe_bubble_fraction(p, m)
        rows.append(row(
            f"bubble ratio {kind} p={p} m={m}: measured vs (p-1)/(m+p-1)", measured, theory,
            measured / theory, "ratio",
            note=f"median of {len(report.steps)} steps, {measured - theory:+.3f} from theory; "
                 f"{FORWARD_MS}/{BACKWARD_MS} ms stages, gloo on CPU",
            group="pipeline bubbles",
        ))
    return rows
