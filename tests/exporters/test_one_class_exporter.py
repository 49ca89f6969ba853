"""An exporter plugin in one class (docs/plugins.md, examples/jsonl_exporter.py), run as users run it.

The same class runs in its own exporter process and on the exporter thread, and sees
the same events; the core restarts a killed exporter process and counts what it lost;
a full buffer drops, counts, leaves a marker in the output and says so at shutdown.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

import sched_trace
from examples.jsonl_exporter import JsonLinesExporter
from sched_trace.export import DROPPED, ExporterPlugin

REPO = Path(__file__).resolve().parents[2]


@sched_trace.stage("forward", level=2, microbatch="mb", attrs={"mode": "mode"})
def forward(mb: int, mode: Any = None) -> int:
    return mb


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def jsonl(tmp_path: Path) -> Any:
    plugins = []

    def start(**settings: Any) -> ExporterPlugin:
        plugin = ExporterPlugin(JsonLinesExporter, "jsonl", path=str(tmp_path / "events.jsonl"), **settings)
        sched_trace.register(plugin, name="jsonl")
        sched_trace.set_thread_info("Scheduler", pp_rank=0)
        sched_trace.configure(level=9, autoload=False)
        plugins.append(plugin)
        return plugin

    yield start
    sched_trace.shutdown()
    for plugin in plugins:
        sched_trace.unregister(plugin)


def test_the_docs_show_the_example_file_whole() -> None:
    page = (REPO / "docs" / "plugins.md").read_text()
    assert f"```python\n{(REPO / 'examples' / 'jsonl_exporter.py').read_text()}```" in page


@pytest.mark.parametrize("process", [True, False], ids=["exporter-process", "exporter-thread"])
def test_the_same_class_sees_the_same_events_in_a_process_or_a_thread(jsonl: Any, tmp_path: Path,
                                                                    process: bool) -> None:
    plugin = jsonl(process=process)
    for mb in range(5):
        forward(mb, mode=object() if mb == 4 else "decode")
    sched_trace.request_event("finished", "r1", output_tokens=3)
    sched_trace.flush()
    stats = sched_trace.stats()["plugins"]["jsonl"]
    assert (stats["exporter_pid"] != os.getpid()) is process
    written = lines(tmp_path / "events.jsonl")
    assert [line.get("microbatch") for line in written[:5]] == [0, 1, 2, 3, 4]
    assert written[0]["rank"].endswith("Scheduler-PP0-DP0-TP0") and written[0]["attrs"] == {"mode": "decode"}
    assert written[4]["attrs"]["mode"].startswith("<object object")  # a user object leaves as its text
    assert written[5] == {"request": "r1", "phase": "finished", "ts_ns": written[5]["ts_ns"]}
    assert stats["received"] == stats["sent"] == stats["handled"] == stats["exported"] == 6
    assert plugin.processor.flush(5.0)


def test_a_killed_exporter_process_is_restarted_and_its_loss_counted(jsonl: Any, tmp_path: Path) -> None:
    plugin = jsonl()
    for mb in range(3):
        forward(mb)
    sched_trace.flush()
    first = sched_trace.stats()["plugins"]["jsonl"]["exporter_pid"]
    plugin.processor.process.kill()
    for mb in range(3, 6):
        forward(mb)
    sched_trace.flush()
    stats = sched_trace.stats()["plugins"]["jsonl"]
    assert stats["exporter_restarts"] == 1 and stats["exporter_pid"] not in (0, first)
    assert stats["lost_in_exporter"] == 0 and stats["exported"] == 6  # the dead one's count is kept
    assert [line["microbatch"] for line in lines(tmp_path / "events.jsonl")] == list(range(6))


def test_a_full_buffer_drops_leaves_a_marker_and_says_so_at_shutdown(jsonl: Any, tmp_path: Path,
                                                                    caplog: Any) -> None:
    plugin = jsonl(capacity=10)
    for mb in range(2_000):  # far faster than an exporter thread that starts now can drain
        forward(mb)
    sched_trace.flush()
    stats = sched_trace.stats()["plugins"]["jsonl"]
    assert stats["dropped"] > 0 and stats["received"] == 2_000
    written = lines(tmp_path / "events.jsonl")
    markers = [line for line in written if line["name"] == DROPPED]
    assert sum(m["attrs"]["dropped_events"] for m in markers) == stats["dropped"]
    assert all(m["rank"].endswith("Scheduler-PP0-DP0-TP0") and m["start_ns"] <= m["end_ns"] for m in markers)
    assert len(written) - len(markers) == stats["sent"] == 2_000 - stats["dropped"]
    with caplog.at_level(logging.WARNING, logger="sched_trace"):
        plugin.stop(5.0)
    (line,) = [r.getMessage() for r in caplog.records if "jsonl: lost" in r.getMessage()]
    assert re.search(rf"lost {stats['dropped']:,} of 2,000 events: {stats['dropped']:,} dropped \(buffer full\)",
                     line)
    assert "raise jsonl's capacity (now 10)" in line and "lower the level" in line
    assert plugin.processor.stats()["received"] == 2_000


def test_an_exporter_class_the_exporter_process_cannot_import_is_refused_at_once() -> None:
    class Local(JsonLinesExporter):
        pass

    with pytest.raises(ValueError, match="importable module"):
        ExporterPlugin(Local, "local")
    ExporterPlugin(Local, "local", process=False)  # on a thread it needs no import
