"""Acceptance (issue 21): hosts' clocks aligned from a real pipeline's cross-host micro-batch order.

A real torch.distributed.pipelining run (gloo, CPU, 1F1B) whose four ranks say they
run on two hosts (``SCHED_TRACE_HOST_ID``). The ground truth is the run itself:
both "hosts" are this machine, so their recorded clocks agree. Then host-b's files
are moved by +37 ms and, separately, -23 ms, with their recorded wall-clock offset
moved too, as a host booted at another time would record them. ``merge`` must put
host-b's slices back within 1 ms (median) of where the unmoved files put them, and
on the unmoved files must move nothing by more than 1 ms, from Perfetto, Chrome
JSON and OTLP-JSON input alike.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sched_trace_perfetto")

from sched_trace import traceio  # noqa: E402
from sched_trace.analysis.merge import merge_files  # noqa: E402
from sched_trace.cli import main  # noqa: E402

from .host_worker import run_pipeline  # noqa: E402

HOSTS = ("host-a", "host-a", "host-b", "host-b")
MS = 1_000_000
OFFSET_KEYS = ("sched_trace.clock.wall_offset_ns", "sched_trace.clock_offset_ns", "clock_offset_ns")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("two-hosts")
    run_pipeline(str(directory), HOSTS)
    return directory


def moved_perfetto(source: Path, target: Path, shift: int) -> None:
    """host-b's Perfetto files as host-b would have written them with its clock ``shift`` ns off."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.perfetto-trace")):
        trace = traceio.read_trace(path)
        moved = shift if {e.rank.host_id for e in trace.events} == {"host-b"} else 0
        events = [e._replace(start_ns=e.start_ns + moved, end_ns=e.end_ns + moved) for e in trace.events]
        offsets = {key: offset + moved for key, offset in trace.clock_offsets.items()}
        traceio.write_perfetto(events, target / path.name, offsets)


def moved_chrome(source: Path, target: Path, shift: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.perfetto-trace")):
        trace = traceio.read_trace(path)
        moved = shift if {e.rank.host_id for e in trace.events} == {"host-b"} else 0
        events = [e._replace(start_ns=e.start_ns + moved, end_ns=e.end_ns + moved) for e in trace.events]
        offsets = {key: offset + moved for key, offset in trace.clock_offsets.items()}
        traceio.write_chrome(events, target / (path.stem + ".json"), offsets)


def moved_otlp(source: Path, target: Path, shift: int) -> None:
    """The otel plugin's OTLP-JSON lines, times and recorded offsets moved on host-b."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.jsonl")):
        lines = []
        for line in path.read_text().splitlines():
            document = json.loads(line)
            for resource_spans in document.get("resourceSpans", []):
                attrs = resource_spans.get("resource", {}).get("attributes", [])
                host = next((a["value"].get("stringValue") for a in attrs if a["key"] in ("host_id", "host.name")),
                            None)
                spans = [s for scope in resource_spans.get("scopeSpans", []) for s in scope.get("spans", [])]
                hosts = {a["value"].get("stringValue") for s in spans for a in s.get("attributes", [])
                         if a["key"] == "host_id"}
                moved = shift if "host-b" in (hosts | {host}) - {None} else 0
                for item in attrs + [a for s in spans for a in s.get("attributes", [])]:
                    if item["key"] in OFFSET_KEYS:
                        item["value"]["intValue"] = str(int(item["value"]["intValue"]) + moved)
                for span in spans:
                    for key in ("startTimeUnixNano", "endTimeUnixNano"):
                        span[key] = str(int(span[key]) + moved)
                    for event in span.get("events", []):
                        event["timeUnixNano"] = str(int(event["timeUnixNano"]) + moved)
            lines.append(json.dumps(document))
        (target / path.name).write_text("\n".join(lines) + "\n")


def starts_by_process(path: Path) -> dict[int, list[tuple[int, str]]]:
    found = defaultdict(list)
    for event in traceio.read_trace(path).events:
        found[(event.rank.host_id, event.rank.pid)].append((event.start_ns, event.name))
    return {key: sorted(values) for key, values in found.items()}


def moves(merged: Path, reference: Path) -> dict[tuple, list[int]]:
    """Per process: how far each slice is from where the reference timeline has it."""
    ours, truth = starts_by_process(merged), starts_by_process(reference)
    assert ours.keys() == truth.keys()
    result = {}
    for key in truth:
        assert [name for _, name in ours[key]] == [name for _, name in truth[key]]
        result[key] = [a - b for (a, _), (b, _) in zip(ours[key], truth[key])]
    return result


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "recorded.perfetto-trace"
    merge_files([run / "perfetto"], out, align=False)
    return out


def test_alignment_of_unshifted_hosts_moves_nothing_by_more_than_a_millisecond(run, reference, tmp_path):
    out = tmp_path / "aligned.perfetto-trace"
    result = merge_files([run / "perfetto"], out)
    for key, shifts in moves(out, reference).items():
        assert max(abs(s) for s in shifts) <= MS, key
    (host_b,) = [h for h in result.alignment.hosts if h.host == "host-b"]
    assert abs(host_b.shift_ns) <= MS and host_b.uncertainty_ns is not None and host_b.handoffs > 0


@pytest.mark.parametrize("shift_ms", [37, -23])
@pytest.mark.parametrize("format", ["perfetto", "chrome", "otlp-json"])
def test_a_host_booted_at_another_time_is_put_back_within_a_millisecond(run, reference, tmp_path, shift_ms, format):
    if format == "otlp-json" and not list((run / "otel").glob("*.jsonl")):
        pytest.skip("sched-trace-otel not installed: no OTLP-JSON files")
    shifted = tmp_path / "shifted"
    {"perfetto": moved_perfetto, "chrome": moved_chrome}.get(format, moved_otlp)(
        run / ("otel" if format == "otlp-json" else "perfetto"), shifted, shift_ms * MS)
    out = tmp_path / "merged.perfetto-trace"
    unaligned = merge_files([shifted], tmp_path / "unaligned.perfetto-trace", align=False)
    assert unaligned.alignment is None
    result = merge_files([shifted], out)
    found = moves(out, reference)
    for (host, pid), shifts in found.items():
        assert abs(statistics.median(shifts)) <= MS, (host, pid, statistics.median(shifts))
    (host_b,) = [h for h in result.alignment.hosts if h.host == "host-b"]
    assert abs(host_b.shift_ns + shift_ms * MS) <= MS and not host_b.reference
    # the merged file says what was done to each host's clock
    descriptors = [json.loads(d)["sched_trace_process"] for d in _process_descriptions(out)]
    assert {d["host_id"]: d["clock_alignment"]["shift_ns"] for d in descriptors}["host-b"] == host_b.shift_ns


def test_report_prints_and_records_each_hosts_estimate(run, tmp_path, capsys):
    shifted = tmp_path / "shifted"
    moved_perfetto(run / "perfetto", shifted, 37 * MS)
    assert main(["report", str(shifted), "--out", str(tmp_path / "out"), "--no-png"]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"clocks aligned .*host-b: ([-+][0-9.]+) ms \u00b1 ([0-9.]+) ms", printed)
    assert found and abs(float(found.group(1)) + 37) <= 1, printed[-500:]
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    hosts = {h["host"]: h for h in data["clock_alignment"]["hosts"]}
    assert hosts["host-a"]["reference"] and abs(hosts["host-b"]["shift_ns"] + 37 * MS) <= MS
    assert main(["report", str(shifted), "--out", str(tmp_path / "kept"), "--no-png", "--no-align"]) == 0
    assert "recorded clock kept" in capsys.readouterr().out


def _process_descriptions(path: Path) -> list[str]:
    pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    return [p.track_descriptor.description for p in trace.packet
            if p.HasField("track_descriptor") and "sched_trace_process" in p.track_descriptor.description]
