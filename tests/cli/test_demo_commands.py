"""``sched-trace demo`` in a fresh directory, then every command it prints, exactly as printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sched_trace import traceio

from .commands import option, printed_commands, run_shell, trace_files

pytest.importorskip("torch")
pytest.importorskip("rich")
pytest.importorskip("matplotlib")
pytest.importorskip("sched_trace_perfetto")
pytest.importorskip("sched_trace_otel")

DEMO = "sched-trace demo --ranks 2 --microbatches 4 --steps 2"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("user")
    done = run_shell(DEMO, home, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return home, done.stdout


def test_the_demo_leaves_no_empty_trace_file(demo):
    home, _ = demo
    out = home / "sched-trace-out"
    files = trace_files(out)
    assert {p.parent.name for p in files} >= {"perfetto", "otel"}
    assert [p for p in files if p.stat().st_size == 0] == []
    # one OTLP-JSON file per rank process: the launcher and mp.spawn's parent exported nothing
    assert len(list((out / "otel").glob("*.jsonl"))) == 2


def test_the_demo_prints_no_hard_wrapped_path(demo):
    home, output = demo
    out = str(home / "sched-trace-out")
    lines_with_paths = [line for line in output.splitlines() if out in line]
    assert lines_with_paths, output
    for line in output.splitlines():  # a path cut at the line's end would leave its tail on the next line
        assert not line.startswith(("sched-trace-out", "/")), f"wrapped line: {line!r}"


def test_the_demo_says_which_steps_its_numbers_leave_out(demo):
    _, output = demo
    # 2 steps of each schedule: 0-1 GPipe, 2-3 1F1B; the first of each is warm-up
    assert "2 steps of each of gpipe, 1f1b (4 in all)" in output
    assert "steps 1, 3 (2 analysed; steps 0, 2 left out: the first step of each schedule, --skip-steps 1;" in output


def test_every_command_the_demo_prints_runs_as_printed(demo):
    home, output = demo
    out = home / "sched-trace-out"
    commands = printed_commands(output)
    verbs = [command.split()[1] for command in commands]
    assert sorted(verbs) == ["convert", "merge", "report", "run"], commands
    demo_report = json.loads((out / "report.json").read_text())
    for command in commands:
        before = trace_files(out)
        done = run_shell(command, home, timeout=400)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        check_promise(command, home, before, demo_report)


def check_promise(command: str, home: Path, before: set, demo_report: dict) -> None:
    """The files ``command`` promises exist and hold what it says."""
    verb = command.split()[1]
    if verb == "run":  # the pipeline again: a new Perfetto and OTLP-JSON file per rank
        new = trace_files(home / "sched-trace-out") - before
        assert sorted(p.parent.name for p in new) == ["otel", "otel", "perfetto", "perfetto"], new
        assert all(p.stat().st_size > 0 for p in new)
    elif verb in ("convert", "merge"):
        written = home / option(command, "-o")
        events = traceio.read_trace(written).events
        assert {"pp_step", "pp_forward", "pp_backward"} <= {e.name for e in events}
        assert len({(e.rank.host_id, e.rank.pid) for e in events}) >= 2  # every rank, not a 0-byte file's
    elif verb == "report":
        out = Path(option(command, "--out"))
        report = json.loads((out / "report.json").read_text())
        assert (out / "report.png").stat().st_size > 10_000
        # same defaults as the demo: the same steps left out (more steps now: `run` traced again)
        assert report["skip_steps"] == demo_report["skip_steps"] == 1
        assert report["skipped_steps"][:2] == demo_report["skipped_steps"] == [0, 2]
