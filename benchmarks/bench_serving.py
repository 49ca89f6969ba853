"""Serving throughput of the SGLang-style example: traced at level 4 with export on, vs off.

Engines of the unmodified example run side by side, each with its own
scheduler processes (one per PP rank):

- ``off``: spawned with the plain environment;
- ``traced``: spawned with the environment ``sched-trace run --config
  examples/serving/sched_trace.toml --level 4`` gives a program (the same
  ``child_environment``), so sched-trace's bootstrap configures every rank process:
  level 4, every installed exporter plugin on (otel OTLP-JSON files with
  per-request spans, Perfetto files, ...);
- (full run only) ``otel only`` / ``perfetto only``: traced, the other plugins
  blocked (``SCHED_TRACE_BLOCK``), to say which exporter a cost comes from.

The benchmark process is the client. It sends the same workload to one engine at
a time, alternating (order rotated every repeat), while the others idle; all are
warm, and a noisy neighbour slows all alike. The throughput ratio is the
median of the per-repeat ratios.

Two CPU figures say where a difference would come from: the scheduler threads'
CPU time per output token (the hot path; the example reports its event loop's
thread CPU per rank), and the CPU time of each engine's whole process tree (rank
processes and the exporter processes they started) per output token.

Run: ``python -m benchmarks.bench_serving [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from .harness import row

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "serving" / "sched_trace.toml"
GROUP = "serving"
LEVEL = 4


@contextmanager
def _environment(env: dict[str, str], cwd: str) -> Iterator[None]:
    """Spawned children inherit os.environ and the working directory at start."""
    saved, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved)


def installed_plugins() -> list[str]:
    import importlib.metadata

    return sorted({ep.name for ep in importlib.metadata.entry_points(group="sched_trace")})


def cases(quick: bool) -> dict[str, Optional[str]]:
    """Case name -> plugins to block (``SCHED_TRACE_BLOCK``); None: not traced at all."""
    chosen: dict[str, Optional[str]] = {"off": None, "traced": ""}
    if not quick:  # which exporter the cost comes from
        plugins = installed_plugins()
        for only in ("otel", "perfetto"):
            if only in plugins:
                chosen[f"{only} only"] = ",".join(p for p in plugins if p != only)
    return chosen


def start_engine(block: Optional[str], server_args: Any, workdir: str) -> Any:
    from examples.serving.engine import Engine
    from sched_trace.commands.run import child_environment

    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "OTEL_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [base.get("PYTHONPATH")])])
    with _environment(base, workdir):
        env = dict(base) if block is None else child_environment(str(CONFIG), [], LEVEL)
    if block:
        env["SCHED_TRACE_BLOCK"] = block
    with _environment(env, workdir):
        return Engine(server_args)


def _tree_cpu_s(root_pids: list[int]) -> float:
    """utime + stime of the given processes and all their live descendants."""
    parent, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid in cpu:
        ancestor = pid
        while ancestor > 1 and ancestor not in root_pids:
            ancestor = parent.get(ancestor, 0)
        if ancestor in root_pids:
            total += cpu[pid]
    return total


def measure(chosen: dict[str, Optional[str]], repeats: int, num_requests: int) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    from examples.serving.client import Workload, run_client
    from examples.serving.model import ModelConfig
    from examples.serving.scheduler import ServerArgs

    # A model big enough that a forward pass takes milliseconds, as on an accelerator.
    model = ModelConfig(hidden_size=768, intermediate_size=2048, num_layers=4)
    server_args = ServerArgs(pp_size=2, max_running_requests=16, model=model)
    workload = Workload(num_requests=num_requests, max_new_tokens=32)
    results: dict[str, dict[str, Any]] = {case: {"tokens_per_s": [], "tokens": 0} for case in chosen}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        engines = {case: start_engine(block, server_args, scratch) for case, block in chosen.items()}
        try:
            for case, engine in engines.items():  # warm-up round, not measured
                results[case]["tokens"] += run_client(engine, workload, round_index=0)["output_tokens"]
            names = list(engines)
            for repeat in range(repeats):
                shift = repeat % len(names)
                for case in names[shift:] + names[:shift]:
                    time.sleep(0.3)  # let the previous engine's exporters settle
                    summary = run_client(engines[case], workload, round_index=repeat + 1)
                    results[case]["tokens_per_s"].append(summary["output_tokens_per_s"])
                    results[case]["tokens"] += summary["output_tokens"]
            for case, engine in engines.items():
                results[case]["tree_cpu_s"] = _tree_cpu_s([p.pid for p in engine.processes])
        finally:
            for case, engine in engines.items():
                stats = engine.shutdown()
                results[case]["scheduler_cpu_s"] = sum(s.loop_cpu_s for s in stats)
    return results


def run(quick: bool) -> list[dict[str, Any]]:
    repeats, num_requests = (6, 32) if quick else (12, 48)
    chosen = cases(quick)
    results = measure(chosen, repeats, num_requests)
    off = results["off"]
    rows = []
    for case in (c for c in chosen if c != "off"):
        traced = results[case]
        label = "level 4 + export on" if case == "traced" else f"level 4, {case}"
        ratios = [t / o for t, o in zip(traced["tokens_per_s"], off["tokens_per_s"])]
        ratio = statistics.median(ratios)
        rows.append(row(
            f"serving example throughput: {label} vs tracing off",
            statistics.median(traced["tokens_per_s"]), statistics.median(off["tokens_per_s"]), ratio, "tokens/s",
            target=">= 0.98x" if case == "traced" else None, met=ratio >= 0.98 if case == "traced" else None,
            group=GROUP, note=f"2 PP ranks, {repeats} alternating rounds of {num_requests} requests; "
                              f"per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}"))
        for key, what, note in (
            ("scheduler_cpu_s", "scheduler-thread CPU", "event loop thread CPU, all ranks: the hot path"),
            ("tree_cpu_s", "CPU of ranks + exporter processes", "everything tracing costs, on any core"),
        ):
            value, baseline = traced[key] / traced["tokens"] * 1e3, off[key] / off["tokens"] * 1e3
            rows.append(row(f"serving example {what} per output token: {label} vs off",
                            value, baseline, value / baseline, "ms/token", group=GROUP, note=note))
    return rows


def main() -> int:
    for result in run("--quick" in sys.argv[1:]):
        print(f"{result['figure']:84} {result['value']:>8.4g} {result['unit']:9} baseline "
              f"{result['baseline']:>8.4g} ratio {result['ratio']:.3f}  {result.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
