"""CPU the scheduler process spends per traced stage call with the perfetto plugin.

    python -m benchmarks.perfetto_cpu [--calls 50000] [--process true|false]

Times (``time.process_time``: every thread of this process, not the exporter
process) N stage calls followed by ``sched_trace.flush()``, once without any
plugin and once with the perfetto plugin registered, and prints both per call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any, Optional

import sched_trace


def _run(calls: int, plugins: list) -> tuple[float, float]:
    sched_trace.configure(level=9, plugins=plugins, autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=0, dp_rank=0, tp_rank=0)

    @sched_trace.stage("decode", level=2, microbatch="mb", batch_size="size", attrs={"queue_depth": "depth"})
    def decode(mb: int, size: int, depth: int) -> int:
        return mb

    for mb in range(200):  # warm-up: exporter started, tracks described
        decode(mb % 4, 8, mb)
    sched_trace.flush()
    cpu, wall = time.process_time(), time.perf_counter()
    for mb in range(calls):
        decode(mb % 4, 8, mb & 63)
    sched_trace.flush(timeout=120.0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sched_trace.shutdown()
    return cpu, wall


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perfetto_cpu", description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--process", choices=("true", "false"), default=None,
                        help="the plugin's process setting (default: the plugin's default)")
    args = parser.parse_args(argv)
    from sched_trace_perfetto import PerfettoPlugin

    overrides: dict[str, Any] = {} if args.process is None else {"process": args.process == "true"}
    with tempfile.TemporaryDirectory() as directory:
        bare_cpu, bare_wall = _run(args.calls, [])
        plugin = PerfettoPlugin(directory=directory, **overrides)
        cpu, wall = _run(args.calls, [plugin])
        stats = plugin.sched_trace_collect_stats()
    per = 1e6 / args.calls
    print(f"calls={args.calls} process={args.process or 'default'}")
    print(f"no plugin : cpu {bare_cpu * per:6.2f} us/call  wall {bare_wall * per:6.2f} us/call")
    print(f"perfetto  : cpu {cpu * per:6.2f} us/call  wall {wall * per:6.2f} us/call  "
          f"(plugin share {(cpu - bare_cpu) * per:6.2f} us/call)")
    print(f"stats     : {dict(stats)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
