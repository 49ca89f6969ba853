"""``sched-trace report`` and ``sched-trace demo``: tables, report.json and a real PNG."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sched_trace import cli, traceio
from sched_trace.analysis import load_events, pipeline_report
from sched_trace.analysis.figure import BUBBLE_ALPHA, BUBBLE_COLOR

from .synthetic import gpipe_order, one_f_one_b_order, simulate

pytest.importorskip("matplotlib")
pytest.importorskip("rich")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def bubble_pixel_share(path: Path) -> float:
    """Share of the image painted in the bubble shade (the colour over white)."""
    from matplotlib import image

    pixels = image.imread(str(path))[..., :3]
    color = [int(BUBBLE_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    shade = [1 - BUBBLE_ALPHA + BUBBLE_ALPHA * c for c in color]
    close = (abs(pixels - shade) < 0.03).all(axis=-1)
    return float(close.mean())


def assert_real_picture(path: Path) -> None:
    width, height = png_size(path)
    assert 800 <= width <= 4000 and 400 <= height <= 3000, (width, height)
    assert bubble_pixel_share(path) > 0.01  # the bubbles are visibly shaded


@pytest.fixture
def pipeline_trace(tmp_path):
    """A GPipe then a 1F1B run of four ranks, written as one Perfetto file per rank."""
    gpipe = simulate(4, 8, gpipe_order, steps=2)
    end = max(e.end_ns for e in gpipe)
    later = simulate(4, 8, one_f_one_b_order, steps=2, schedule="Schedule1F1B", start_ns=end)
    later = [e._replace(batch_id=e.batch_id + 2) for e in later]
    directory = tmp_path / "traces"
    directory.mkdir()
    for rank in range(4):
        mine = [e for e in gpipe + later if e.rank.pp_rank == rank]
        traceio.write_perfetto(mine, directory / f"rank{rank}.perfetto-trace", {("host", 1000 + rank): 0})
    return directory


def test_report_prints_tables_and_writes_png_and_json(pipeline_trace, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(pipeline_trace), "--out", str(out), "--skip-steps", "0"]) == 0
    printed = capsys.readouterr().out
    for text in ("Pipeline ranks", "PP0", "PP3", "GPipe m=8", "1F1B m=8", "27.3%", "pp_forward",
                 "critical path", "report.png"):
        assert text in printed
    data = json.loads((out / "report.json").read_text())
    assert data["bubble_ratio"] == pytest.approx(3 / 11)
    assert [s["steps"] for s in data["schedules"]] == [2, 2]
    assert_real_picture(out / "report.png")


def test_report_skip_steps_and_step_name(pipeline_trace, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(pipeline_trace), "--out", str(out), "--skip-steps", "1",
                     "--step", "pp_step", "--no-png"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [s["index"] for s in data["steps"]] == [1, 3]
    assert not (out / "report.png").exists()


def test_report_json_left_in_the_trace_directory_is_not_read_as_a_trace(pipeline_trace, capsys):
    for _ in range(2):
        assert cli.main(["report", str(pipeline_trace), "--out", str(pipeline_trace), "--no-png"]) == 0
    assert (pipeline_trace / "report.json").exists()
    with pytest.raises(traceio.TraceFormatError):
        load_events([pipeline_trace / "report.json"])  # named explicitly, it must be a trace


def test_report_says_what_is_wrong(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing.perfetto-trace")]) == 2
    assert "missing.perfetto-trace" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no trace files" in capsys.readouterr().err


def test_load_events_reports_progress_per_file(pipeline_trace):
    calls = []
    events = load_events([pipeline_trace], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(events) == 2 * (2 * 8 * 4 + 4) * 2


def test_the_docs_file_reading_calls(pipeline_trace):
    # The `# not-run` block of docs/bubbles.md, on files of the same shape.
    report = pipeline_report(load_events([pipeline_trace]), skip_steps=1)
    lines = [f"{s.schedule} bubble {s.bubble_ratio:.1%}, theory {s.theory_bubble_ratio:.1%}"
             for s in report.schedules]
    assert lines == ["ScheduleGPipe m=8 bubble 27.3%, theory 27.3%", "Schedule1F1B m=8 bubble 27.3%, theory 27.3%"]
    rank = report.ranks[0]
    assert rank.lane.label == "PP0" and rank.busy_ns > 0 and rank.comm_ns == 0
    last = report.steps[-1]
    assert last.ranks[0].phase("warmup").forwards == 4
    assert last.critical_path.describe().startswith("PP0:pp_forward[0] -> PP1:pp_forward[0]")


def test_demo_runs_a_traced_pipeline_and_leaves_everything_it_promises(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sched_trace_perfetto")
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "sched_trace.cli", "demo", "--out", str(out), "--ranks", "2",
         "--microbatches", "4", "--steps", "2", "--stage-ms", "10"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for text in ("ui.perfetto.dev", "report.png", "GPipe m=4", "1F1B m=4"):
        assert text in done.stdout
    merged = traceio.read_trace(out / "pipeline.perfetto-trace")
    names = {e.name for e in merged.events}
    # Per-rank files, merged file and OTLP-JSON hold the same slices: each counts once.
    assert len(load_events([out])) == len(load_events([out / "perfetto"])) == len(merged.events)
    assert {"pp_step", "pp_forward", "pp_backward", "pp_p2p_wait"} <= names
    assert len(list((out / "perfetto").glob("*.perfetto-trace"))) >= 2
    assert_real_picture(out / "report.png")
    data = json.loads((out / "report.json").read_text())
    assert {r["lane"]["pp_rank"] for r in data["ranks"]} == {0, 1}
    # The file holds the analysis of the traced run (how close it comes to theory is a benchmark figure).
    again_report = pipeline_report(load_events([out / "perfetto"]), skip_steps=1)
    assert data["bubble_ratio"] == pytest.approx(again_report.bubble_ratio) and 0 < data["bubble_ratio"] < 1
    again = tmp_path / "again"
    assert cli.main(["report", str(out / "perfetto"), "--out", str(again), "--skip-steps", "1"]) == 0
    assert_real_picture(again / "report.png")
    try:
        import sched_trace_otel  # noqa: F401
    except ImportError:
        return
    spans = [p for p in (out / "otel").glob("*.jsonl") if p.stat().st_size]
    assert spans and traceio.read_trace(spans[0]).format == "otlp-json"
