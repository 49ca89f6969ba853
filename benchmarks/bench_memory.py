"""Exporters stalled: resident memory stays within the buffer bound, drops are counted.

A child process (clean RSS) registers a plugin whose BackgroundExporter, at the
default capacity, exports through a function that blocks forever. Traced calls
keep coming; RSS is read after 2x and after 8x the capacity in events. The buffer
holds at most ``capacity`` events plus the one batch the stalled export holds, so
RSS growth must stop at the bound however many events arrive, and every event
beyond it must show up in the drop counter.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from typing import Any

BOUND_MIB = 64.0


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(multiples: list[int]) -> dict[str, Any]:
    import sched_trace
    from sched_trace.recorder import DEFAULT_CAPACITY, BackgroundExporter

    from . import workload

    stall = threading.Event()

    class StalledPlugin:
        def __init__(self) -> None:
            self.exporter = BackgroundExporter(lambda batch: stall.wait(), name="stalled")

        def sched_trace_stage_end(self, event: Any) -> None:
            self.exporter.append(event)

    plugin = StalledPlugin()
    workload.configure(plugins=(plugin,))
    case = workload.caller("traced", 8)
    case(1)  # starts the exporter thread, which takes this event and blocks
    plugin.exporter.flush(0.5)
    taken = 1 - plugin.exporter.stats()["buffered"]  # events the blocked export holds
    gc.collect()
    before = _rss_bytes()
    sent, points = 1, []
    for multiple in multiples:
        target = multiple * DEFAULT_CAPACITY
        case(target - sent)
        sent = target
        gc.collect()
        points.append({"events": sent, "rss_growth": _rss_bytes() - before, **plugin.exporter.stats()})
    stall.set()
    sched_trace.set_level(0)
    return {"capacity": DEFAULT_CAPACITY, "taken": taken, "points": points}


def run(quick: bool) -> list[dict[str, Any]]:
    from .harness import row

    multiples = [2, 4] if quick else [2, 8]
    env = dict(os.environ, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", json.dumps(multiples)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    capacity, first, last = result["capacity"], result["points"][0], result["points"][-1]
    mib = 1024 * 1024
    group = "memory, exporters stalled"
    held = capacity + result["taken"]  # the buffer, plus what the blocked export holds
    growth = last["rss_growth"] / mib
    return [
        row(f"RSS growth after {last['events']:,} events vs {BOUND_MIB:g} MiB bound", growth, BOUND_MIB,
            growth / BOUND_MIB, "MiB", target="<= 1x", met=growth <= BOUND_MIB, group=group,
            note=f"capacity {capacity:,} events"),
        row(f"RSS growth after {last['events']:,} vs after {first['events']:,} events", growth,
            first["rss_growth"] / mib, last["rss_growth"] / max(1, first["rss_growth"]), "MiB",
            target="<= 1.1x", met=last["rss_growth"] <= 1.1 * first["rss_growth"], group=group),
        row("events dropped (counted) vs events beyond the buffer", float(last["dropped"]),
            float(last["events"] - held), last["dropped"] / max(1, last["events"] - held), "events",
            target="== 1x", met=last["dropped"] == last["events"] - held, group=group),
        row("resident bytes per buffered event", last["rss_growth"] / held, None, None, "bytes", group=group),
    ]


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
