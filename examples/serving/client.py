"""A load-generating client: requests with W3C ``traceparent``, throughput summary.

Each request carries a ``traceparent`` as an HTTP client instrumented with
OpenTelemetry would send it, so its spans in the engine join the client's trace.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

from .engine import Engine
from .schedule_batch import Req


@dataclass(frozen=True)
class Workload:
    num_requests: int = 64
    min_prompt_len: int = 32
    max_prompt_len: int = 128
    min_new_tokens: int = 8
    max_new_tokens: int = 32
    request_rate: float = float("inf")  # requests per second; inf sends them all at once
    seed: int = 0


def traceparent(rng: random.Random) -> str:
    """A sampled W3C ``traceparent``: version 00, 16-byte trace id, 8-byte parent id."""
    return f"00-{rng.getrandbits(128) or 1:032x}-{rng.getrandbits(64) or 1:016x}-01"


def make_requests(workload: Workload, vocab_size: int, round_index: int = 0) -> list[Req]:
    """The same prompts every round; fresh request ids and trace contexts per round."""
    rng = random.Random(workload.seed)
    trace_rng = random.Random(f"{workload.seed}/{round_index}")
    reqs = []
    for index in range(workload.num_requests):
        prompt_len = rng.randint(workload.min_prompt_len, workload.max_prompt_len)
        reqs.append(Req(
            rid=f"req-{round_index}-{index}",
            input_ids=[rng.randrange(vocab_size) for _ in range(prompt_len)],
            max_new_tokens=rng.randint(workload.min_new_tokens, workload.max_new_tokens),
            traceparent=traceparent(trace_rng),
        ))
    return reqs


def run_client(engine: Engine, workload: Workload, round_index: int = 0) -> dict[str, Any]:
    """Send the workload, wait for every request, and summarise throughput."""
    reqs = make_requests(workload, engine.server_args.model.vocab_size, round_index)
    rng = random.Random(workload.seed + 1)
    start = time.perf_counter()
    if workload.request_rate == float("inf"):
        engine.submit(reqs)
    else:
        for req in reqs:
            engine.submit([req])
            time.sleep(rng.expovariate(workload.request_rate))
    outputs = dict(engine.outputs(len(reqs)))
    duration = time.perf_counter() - start
    output_tokens = sum(len(ids) for ids in outputs.values())
    digest = hashlib.sha256(repr([outputs[req.rid] for req in reqs]).encode()).hexdigest()[:16]
    return {
        "pp_size": engine.server_args.pp_size,
        "requests": len(outputs),
        "input_tokens": sum(len(req.input_ids) for req in reqs),
        "output_tokens": output_tokens,
        "duration_s": duration,
        "requests_per_s": len(outputs) / duration,
        "output_tokens_per_s": output_tokens / duration,
        "outputs_sha256": digest,
        "traceparents": {req.rid: req.traceparent for req in reqs},
    }
