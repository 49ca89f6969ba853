from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

import sched_trace

pytest.importorskip("perfetto")


@pytest.fixture
def run_pipeline() -> Callable[..., Any]:
    """Run a toy 3-rank pipeline in this process (rank per call) through a plugin."""

    def run(plugin: Any, steps: int = 2, microbatches: int = 2, ranks: int = 3) -> Any:
        sched_trace.configure(level=9, plugins=[plugin], autoload=False)
        sched_trace.set_thread_info("Scheduler", dp_rank=0, tp_rank=0)

        @sched_trace.stage("forward", level=2, microbatch="mb", rank={"pp_rank": "pp"},
                           attrs={"queue_depth": "depth"})
        def forward(pp: int, mb: int, depth: int) -> None:
            time.sleep(0.0001)

        @sched_trace.stage("backward", level=2, microbatch="mb", rank={"pp_rank": "pp"})
        def backward(pp: int, mb: int) -> None:
            time.sleep(0.0001)

        @sched_trace.batch("step", batch_size="size")
        def step(size: int) -> None:
            for mb in range(microbatches):
                for pp in range(ranks):
                    forward(pp, mb, microbatches - mb)
            for mb in range(microbatches):
                for pp in reversed(range(ranks)):
                    backward(pp, mb)

        for _ in range(steps):
            step(8)
        sched_trace.shutdown()
        return plugin

    return run


def trace_files(directory: Path, suffix: str) -> list[Path]:
    return sorted(directory.glob(f"*{suffix}"))
