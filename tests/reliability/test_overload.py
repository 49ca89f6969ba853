"""Drops a person sees: a rank records as fast as it can into small buffers (issue 18's overload run).

Every plugin drops (the buffers are far smaller than what one drain interval brings);
each says so in one warning line at shutdown, how many of how many and what to change;
the Perfetto file and the OTLP-JSON file carry ``sched_trace.dropped`` markers on the
rank whose events were dropped, adding up to the plugin's count; Prometheus exposes a
dropped-events counter per plugin.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from sched_trace import traceio
from sched_trace.export import DROPPED

CHILD = str(Path(__file__).with_name("overload_child.py"))
STEPS, CAPACITY = 20_000, 2_000  # 100,000 events; a buffer of 2,000


def marker_counts_otlp(directory: Path) -> list[tuple[int, dict]]:
    found = []
    for path in directory.glob("traces-*.jsonl"):
        for line in path.read_text().splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                for span in (s for ss in rs["scopeSpans"] for s in ss["spans"]):
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}
                    if span["name"] == DROPPED:
                        found.append((int(attrs["dropped_events"]), span))
    return found


def test_an_overloaded_rank_drops_and_every_output_says_so(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, CHILD, str(STEPS), str(CAPACITY), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    stats = report["stats"]
    for name in ("otel", "perfetto", "prometheus"):
        counters = stats[name]
        assert counters["received"] == STEPS * 5 and counters["dropped"] > 0, (name, counters)
        # one line per plugin: how many of how many, and what to change
        (line,) = [l for l in run.stderr.splitlines() if l.startswith(f"sched-trace {name}: lost")]
        assert f"lost {counters['dropped']:,} of {STEPS * 5:,} events: {counters['dropped']:,} dropped (buffer full)" \
            in line, line
        assert f"raise [plugins.{name}] capacity (now {CAPACITY:,})" in line and "lower the level" in line
        # Prometheus: a dropped-events counter per plugin
        assert re.search(rf'sched_trace_events_dropped_total{{plugin="{name}"}} {counters["dropped"]}\.0',
                         report["metrics"]), name
    # the Perfetto timeline shows where and how many, on the rank's track
    events = [e for path in (tmp_path / "perfetto").iterdir() for e in traceio.read_trace(path).events]
    markers = [e for e in events if e.name == DROPPED]
    assert markers and sum(e.attrs["dropped_events"] for e in markers) == stats["perfetto"]["dropped"]
    assert {(e.rank.thread_label, e.rank.pp_rank) for e in markers} == {("Scheduler", 0)}
    assert len(events) - len(markers) == stats["perfetto"]["sent"] == STEPS * 5 - stats["perfetto"]["dropped"]
    # the OTLP output says so: a span per run of drops on the rank's thread, with the count
    otlp = marker_counts_otlp(tmp_path / "otel")
    assert otlp and sum(count for count, _ in otlp) == stats["otel"]["dropped"]
    assert all(int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"]) for _, span in otlp)
