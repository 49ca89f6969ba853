"""A rank process for the capture tests: configures sched-trace, runs a tiny pipeline step."""

from __future__ import annotations

import os
import sys

import sched_trace


@sched_trace.batch("pp_step")
def step(microbatches: int) -> None:
    for mb in range(microbatches):
        forward(mb)


@sched_trace.stage("pp_forward", level=2, microbatch="mb")
def forward(mb: int) -> int:
    return mb


def main(pp_rank: int, microbatches: int = 4, exit_hard: bool = False) -> None:
    sched_trace.configure(autoload=False, level=4)
    sched_trace.set_thread_info("Worker", pp_rank=pp_rank)
    for _ in range(2):
        step(microbatches)
    if exit_hard:  # as a multiprocessing child or a killed rank ends: no atexit, no shutdown
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["hard"])
