"""``python -m examples.serving``: start the engine, run the client, print throughput.

No tracing code here: ``sched-trace run -- python -m examples.serving`` traces it
through the ``sched_trace.toml`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Optional, Sequence

from .client import Workload, run_client
from .engine import Engine
from .model import ModelConfig
from .scheduler import ServerArgs


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--pp-size", type=int, default=2, help="pipeline-parallel ranks (processes)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="upper bound of tokens per request")
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (default: all at once)")
    parser.add_argument("--max-running-requests", type=int, default=16, help="per micro-batch slot")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=384)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1, help="send the workload this many times (steady-state throughput)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    model = replace(ModelConfig(), num_layers=args.num_layers, hidden_size=args.hidden_size,
                    intermediate_size=args.intermediate_size)
    server_args = ServerArgs(pp_size=args.pp_size, max_running_requests=args.max_running_requests, model=model)
    workload = Workload(
        num_requests=args.num_requests,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=min(Workload.min_new_tokens, args.max_new_tokens),
        request_rate=args.request_rate,
        seed=args.seed,
    )
    engine = Engine(server_args)
    rounds = []
    try:
        for round_index in range(args.rounds):
            summary = run_client(engine, workload, round_index)
            rounds.append(summary)
            print(
                f"pp_size={summary['pp_size']} requests={summary['requests']} "
                f"output_tokens={summary['output_tokens']} duration={summary['duration_s']:.2f}s "
                f"throughput={summary['requests_per_s']:.1f} req/s, {summary['output_tokens_per_s']:.0f} tok/s",
                flush=True,
            )
    except BaseException:
        engine.kill()
        raise
    rank_stats = engine.shutdown()
    if args.json:
        summary = dict(
            rounds[-1],
            rounds=[r["output_tokens_per_s"] for r in rounds],
            scheduler_loop_cpu_s=[s.loop_cpu_s for s in rank_stats],
            scheduler_forward_ct=[s.forward_ct for s in rank_stats],
        )
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
