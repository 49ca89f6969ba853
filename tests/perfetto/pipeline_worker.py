"""A toy pipeline rank run in a spawned process: stages on one PP rank, exported to files.

Each rank runs ``steps`` batches of ``microbatches`` forward then backward stages
(GPipe order). Like a real pipeline, a rank's forward of a micro-batch waits for
the previous rank's (a message through a pipe) and its backward for the next
rank's. It leaves shutdown to the interpreter's exit, to prove nothing is lost.
"""

from __future__ import annotations

import os
import time
from typing import Any


def run_rank(rank: int, world_size: int, directories: dict[str, str], steps: int, microbatches: int,
             links: dict[str, Any]) -> None:
    """``links``: ``fwd_in``/``fwd_out``/``bwd_in``/``bwd_out`` pipe ends (absent at the edges)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))
    # Exit waits this long for the exporter processes (a hang guard): the fixture reads the
    # files as soon as the ranks exit, and on a loaded machine the 5 s default is not enough.
    os.environ.setdefault("SCHED_TRACE_EXIT_TIMEOUT", "120")
    import sched_trace

    plugins: list[Any] = []
    if "perfetto" in directories:
        from sched_trace_perfetto import PerfettoPlugin
        plugins.append(PerfettoPlugin(directory=directories["perfetto"]))
    if "chrome" in directories:
        from sched_trace_perfetto import PerfettoPlugin
        plugins.append(PerfettoPlugin(directory=directories["chrome"], format="chrome"))
    if "otel" in directories:
        from sched_trace_otel.plugin import OtelPlugin
        plugins.append(OtelPlugin(directory=directories["otel"], process=False))
    sched_trace.configure(level=9, plugins=plugins, autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=rank, dp_rank=0, tp_rank=0)

    @sched_trace.stage("forward", level=2, microbatch="mb")
    def forward(mb: int) -> None:
        time.sleep(0.0002)

    @sched_trace.stage("backward", level=2, microbatch="mb")
    def backward(mb: int) -> None:
        time.sleep(0.0002)

    def hop(stage: Any, mb: int, source: str, target: str) -> None:
        if source in links:
            assert links[source].recv() == mb
        stage(mb)
        if target in links:
            links[target].send(mb)

    @sched_trace.batch("step", batch_size="size")
    def step(size: int) -> None:
        for mb in range(microbatches):
            hop(forward, mb, "fwd_in", "fwd_out")
        for mb in range(microbatches):
            hop(backward, mb, "bwd_in", "bwd_out")

    for _ in range(steps):
        step(microbatches * 4)
