"""What ``demo``/``report``/``merge`` say, and leave behind, when something is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sched_trace import cli

from .commands import user_environment


def run_without(modules: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a process where ``modules`` cannot be imported, as after a plain install."""
    program = (f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None  # import raises, find_spec: None\n"
               f"from sched_trace.cli import main\nsys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", program], cwd=cwd, env=user_environment(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("missing, argv, hint", [
    (["rich", "matplotlib"], ["demo"],
     "sched-trace demo needs rich, matplotlib: pip install 'sched-trace[report]'"),
    (["torch", "rich", "matplotlib"], ["demo"],
     "sched-trace demo needs torch, rich, matplotlib: pip install 'sched-trace[report]' torch"),
    (["torch", "sched_trace_perfetto", "sched_trace_otel"], ["demo"],
     "sched-trace demo needs torch, sched_trace_perfetto: pip install 'sched-trace[perfetto]' torch"),
    (["rich"], ["report", "traces/"], "sched-trace report needs rich: pip install 'sched-trace[report]'"),
    (["matplotlib"], ["report", "traces/"], "sched-trace report needs matplotlib: pip install 'sched-trace[report]'"),
])
def test_a_missing_extra_is_named_in_one_line_before_any_work(tmp_path, missing, argv, hint):
    result = run_without(missing, argv, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == hint  # one line, no traceback
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_report_tables_only_need_no_matplotlib(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = run_without(["matplotlib"], ["report", "empty.jsonl", "--no-png"], tmp_path)
    assert "needs" not in result.stderr  # got past the install check to the input itself
    assert "empty.jsonl" in result.stderr


def test_report_on_an_empty_file_fails_before_writing_over_a_good_report(tmp_path, capsys):
    out = tmp_path / "sched-trace-out"
    out.mkdir()
    good = {"kept": "the demo's report"}
    (out / "report.json").write_text(json.dumps(good))
    (tmp_path / "empty.jsonl").write_text("")
    status = cli.main(["report", str(tmp_path / "empty.jsonl"), "--out", str(out)])
    err = capsys.readouterr().err
    assert status != 0 and "empty.jsonl" in err
    assert json.loads((out / "report.json").read_text()) == good
    assert not (out / "report.png").exists()


def test_merge_of_an_empty_file_fails_and_writes_no_output(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    merged = tmp_path / "merged.perfetto-trace"
    assert cli.main(["merge", str(tmp_path / "empty.jsonl"), "-o", str(merged)]) == 2
    err = capsys.readouterr().err
    assert "empty.jsonl" in err and "nothing written" in err
    assert not merged.exists()
