"""A toy pipeline-parallel scheduler, traced with sched-trace, used by the otel tests.

Importable by ``multiprocessing`` spawn children (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import sched_trace


@dataclass
class Req:
    rid: str
    traceparent: Optional[str] = None


@dataclass
class Batch:
    reqs: list = field(default_factory=list)


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch.reqs)")
def run_batch(batch: Batch, mb_id: int, fail: bool = False) -> None:
    if fail:
        raise RuntimeError(f"micro-batch {mb_id} failed")


@sched_trace.batch("decode_step", level=1, batch_size="len(batch.reqs)", requests="batch.reqs")
def decode_step(batch: Batch, microbatches: int, fail_mb: Optional[int] = None) -> None:
    for mb_id in range(microbatches):
        try:
            run_batch(batch, mb_id, fail=mb_id == fail_mb)
        except RuntimeError:
            pass


def run_steps(batches: list[Batch], microbatches: int, fail_mb: Optional[int] = None) -> None:
    for batch in batches:
        decode_step(batch, microbatches, fail_mb)


def rank_main(pp_rank: int, settings: dict, env: dict, requests: list, steps: int, microbatches: int,
              results: Any) -> None:
    """One scheduler process: its own pp_rank, its own exporter process."""
    os.environ.update(env)
    from sched_trace_otel import OtelPlugin

    sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=pp_rank, dp_rank=0)
    sched_trace.configure(level=9, plugins=[OtelPlugin(**settings)], autoload=False)
    batches = [Batch([Req(rid, tp) for rid, tp in requests]) for _ in range(steps)]
    run_steps(batches, microbatches, fail_mb=microbatches - 1)
    sched_trace.shutdown(timeout=60)
    stats = next(iter(sched_trace.stats()["plugins"].values()))
    results.put((pp_rank, os.getpid(), stats))


def fork_child_main(results: Any) -> None:
    """Runs in a forked child: traces two steps and leaves without calling shutdown."""
    run_steps([Batch(), Batch()], microbatches=1)
    results.put(os.getpid())
