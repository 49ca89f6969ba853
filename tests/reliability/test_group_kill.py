"""SIGKILL to the scheduler's whole process group, as SGLang stops its schedulers: every span or
slice an exporter counted as written is in its file, and the loss is bounded and measured.

The scheduler child records stages until killed; its exporter processes (otel OTLP-JSON,
Perfetto protobuf, Chrome JSON) are in its process group and die with it, so no flush or
shutdown ever runs. What each exporter last reported as written (its own count, kept by
the child in a file that survives the kill) must be in the file: "exported" means on disk.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from pathlib import Path
from typing import Any

from sched_trace import traceio

from .test_process_life import start_child, wait_recorded

WITNESSED_AT_LEAST = 200  # every exporter has written this much before the kill


def otlp_json_spans(directory: Path) -> list[dict]:
    """Every span of the complete lines (a line the kill cut short was never counted)."""
    spans = []
    for path in directory.glob("traces-*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                document = json.loads(line)
            except ValueError:
                continue
            spans += [s for rs in document["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    return spans


def trace_events(directory: Path) -> list[Any]:
    return [event for path in directory.iterdir() for event in traceio.read_trace(path).events]


def test_group_sigkill_keeps_everything_counted_as_written(tmp_path: Path, record_property: Any) -> None:
    counter = tmp_path / "counter"
    counter.write_bytes(bytes(32))
    child = start_child(tmp_path, "witness", 0, None, CHILD_COUNTER=str(counter),
                        CHILD_CHROME_DIR=str(tmp_path / "chrome"))
    wait_recorded(child)
    deadline = time.monotonic() + 120
    while min(struct.unpack("<4q", counter.read_bytes())[1:]) < WITNESSED_AT_LEAST:  # all three exporting
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(child.pid, signal.SIGKILL)  # the scheduler and its exporter processes, at once
    child.wait(30)
    recorded, spans_exported, perfetto_written, chrome_written = struct.unpack("<4q", counter.read_bytes())
    time.sleep(0.2)  # the kernel has reaped the group; nothing writes any more
    spans = otlp_json_spans(tmp_path / "otel")
    perfetto = trace_events(tmp_path / "perfetto")
    chrome = trace_events(tmp_path / "chrome")
    assert len(spans) >= spans_exported > 0
    assert len(perfetto) >= perfetto_written > 0
    assert len(chrome) >= chrome_written > 0
    # what reached the files is a prefix of what was recorded: the loss is the tail
    in_file = sorted(e.microbatch for e in perfetto)
    assert in_file == list(range(len(in_file))) and len(in_file) <= recorded
    lost = recorded - len(in_file)
    record_property("group_sigkill_lost_stages", lost)
    print(f"group SIGKILL: recorded {recorded}, in the Perfetto file {len(in_file)}, lost {lost}; "
          f"otel spans in file {len(spans)} >= counted {spans_exported}")
