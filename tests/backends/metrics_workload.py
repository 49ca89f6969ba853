"""A small serving-and-pipeline workload with known counts, for the real-backend tests.

Run as a script it is one rank process (``PP_RANK`` in the environment) that prints
its ground truth as JSON: what pipeline_report says its bubble ratio is.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import sched_trace

STEPS, MICROBATCHES, FAILING = 5, 3, 2      # forward raises in FAILING of the STEPS * MICROBATCHES calls
REQUESTS, ABORTED, OUTPUT_TOKENS = 8, 1, 4  # requests finish after OUTPUT_TOKENS tokens; ABORTED never scheduled


@sched_trace.stage("forward", level=2, microbatch="mb_id", batch_size="len(batch)")
def forward(batch: list, mb_id: int, fail: bool) -> None:
    sum(range(3000 * len(batch)))
    if fail:
        raise ValueError(f"micro-batch {mb_id} failed")


@sched_trace.stage("send_activations", level=2, microbatch="mb_id")
def send(mb_id: int) -> None:
    sum(range(2000))


@sched_trace.batch("engine_step", level=1, batch_size="len(batch)")
def engine_step(batch: list, step: int) -> None:
    for mb_id in range(MICROBATCHES):
        try:
            forward(batch, mb_id, fail=(step * MICROBATCHES + mb_id) < FAILING)
        except ValueError:
            pass
        send(mb_id)


def run(prefix: str = "req") -> None:
    """STEPS engine steps; REQUESTS requests live through them; ABORTED more are aborted while queued."""
    rids = [f"{prefix}-{i}" for i in range(REQUESTS)]
    for rid in rids:
        sched_trace.request_event("arrived", rid, prompt_tokens=16, **{"gen_ai.request.model": "tiny"})
    for i in range(ABORTED):
        sched_trace.request_event("arrived", f"{prefix}-aborted-{i}", prompt_tokens=16)
        sched_trace.request_event("aborted", f"{prefix}-aborted-{i}")
    for step in range(STEPS):
        if step == 0:
            for rid in rids:
                sched_trace.request_event("scheduled", rid)
        engine_step(rids, step)
        if step == 0:
            for rid in rids:
                sched_trace.request_event("first_token", rid)
        if step == OUTPUT_TOKENS - 1:
            for rid in rids:
                sched_trace.request_event("finished", rid, output_tokens=OUTPUT_TOKENS, finish_reason="length")


def rank_main() -> None:
    """One rank process in prometheus_client's multiprocess mode."""
    from sched_trace_prometheus import PrometheusPlugin

    pp_rank = int(os.environ["PP_RANK"])
    recorder = sched_trace.MemoryRecorder()
    sched_trace.configure(level=9, plugins=[PrometheusPlugin(), recorder], autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=pp_rank, tp_rank=0, dp_rank=0)
    run(prefix=f"pp{pp_rank}")
    sched_trace.shutdown()  # drains the exporter thread: every value is in the shared files
    (rank,) = sched_trace.analysis.pipeline_report(recorder.events).ranks
    truth: dict[str, Any] = {"pp_rank": pp_rank, "bubble_ratio": rank.bubble_ratio, "busy_ns": rank.busy_ns}
    json.dump(truth, sys.stdout)


def otel_rank_main() -> None:
    """One rank process whose otel plugin is configured by the standard OTEL_* variables alone."""
    from sched_trace_otel import OtelPlugin

    pp_rank = int(os.environ["PP_RANK"])
    sched_trace.configure(level=9, plugins=[OtelPlugin()], autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=pp_rank, tp_rank=0, dp_rank=0)
    run(prefix=f"pp{pp_rank}")
    sched_trace.shutdown()
    json.dump(next(iter(sched_trace.stats()["plugins"].values())), sys.stdout)


if __name__ == "__main__":
    otel_rank_main() if sys.argv[1:] == ["otel"] else rank_main()
