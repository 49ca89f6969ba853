"""``report``, ``merge`` and ``convert`` on bad input: one line naming the file and the problem, exit 2.

And on the demo's kind of output folder: empty files (a process that exported
nothing) and the project's own ``report.json``/``report.png`` are skipped alike
by all three, never read as another format.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("perfetto")

from sched_trace import SchedTraceError, SchedTraceWarning, cli, traceio  # noqa: E402

from . import samples  # noqa: E402

BAD = {
    "wrong.json": (b'{"traceEvents": 5}', "wrong.json: traceEvents must be a list, got int"),
    "bad.jsonl": (b'{"resourceSpans": "x"}\n', "bad.jsonl: line 1: resourceSpans must be a list, got str"),
    "event.json": (b'{"traceEvents": [{"ph": "X", "ts": "soon", "dur": 1}]}',
                   "event.json: traceEvents[0]: ts must be a finite number of microseconds"),
    "huge.json": (b'{"traceEvents": [{"ph": "X", "ts": 1e400, "dur": 1}]}', "huge.json: traceEvents[0]: ts"),
    "span.jsonl": (b'{"resourceSpans": []}\n{"resourceSpans": [{"scopeSpans": [{"spans": '
                   b'[{"name": "fwd", "startTimeUnixNano": "99999999999999999999"}]}]}]}\n',
                   "span.jsonl: line 2: span 'fwd': start time = 99999999999999999999 is out of range"),
    "pid.jsonl": (b'{"resourceSpans": [{"resource": {"attributes": [{"key": "process.pid", "value": '
                  b'{"intValue": "many"}}]}, "scopeSpans": [{"spans": [{"name": "x"}]}]}]}\n',
                  "pid.jsonl: line 1: intValue must be an integer, got 'many'"),
    "deep.json": (b"[" * 100_000, "deep.json: not a Chrome trace JSON file (JSON nested too deeply)"),
    "junk.perfetto-trace": (bytes(range(256)) * 4, "junk.perfetto-trace: not a Perfetto protobuf trace"),
    "digits.json": (b'{"traceEvents": [{"ph": "X", "ts": 1' + b"0" * 5000 + b', "dur": 1}]}',
                    "digits.json: not a Chrome trace JSON file (Exceeds the limit (4300 digits)"),
    "negative.json": (b'{"traceEvents": [{"ph": "X", "name": "fwd", "ts": 5, "dur": -1}]}',
                      "negative.json: traceEvents[0]: slice 'fwd' ends (4000) before it starts (5000)"),
    "rank.json": (b'{"traceEvents": [{"ph": "M", "name": "thread_name", "args": {"sched_trace_rank": {"pid": "x"}}}]}',
                  "rank.json: traceEvents[0]: sched_trace_rank.pid must be an integer, got 'x'"),
    "offset.json": (b'{"traceEvents": [], "sched_trace": {"clock_offsets": [{"host_id": "h", "pid": 1, '
                    b'"clock_offset_ns": 1e30}]}}', "offset.json: clock_offset_ns must be an integer, got number 1E+30"),
    "latin1.json": ('{"traceEvents": [], "x": "\u00e9"}'.encode("latin-1") + b" " * 8,
                    "latin1.json: not UTF-8 text"),
}


def _command(name: str, path: Path, tmp_path: Path) -> list[str]:
    if name == "report":
        return ["report", str(path), "--out", str(tmp_path / "report-out"), "--no-png"]
    return [name, str(path), "-o", str(tmp_path / f"{name}-out.perfetto-trace")]


@pytest.mark.parametrize("command", ["report", "merge", "convert"])
@pytest.mark.parametrize("file_name", sorted(BAD))
def test_a_bad_file_is_one_line_naming_it_and_exit_2(tmp_path, capsys, command, file_name):
    content, expected = BAD[file_name]
    path = tmp_path / file_name
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchedTraceWarning)
        status = cli.main(_command(command, path, tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert expected in lines[0] and str(tmp_path) in lines[0]


def test_every_reader_error_is_a_sched_trace_error(tmp_path):
    for file_name, (content, expected) in BAD.items():
        path = tmp_path / file_name
        path.write_bytes(content)
        with pytest.raises(SchedTraceError) as caught:
            traceio.read_trace(path)
        assert isinstance(caught.value, traceio.TraceFormatError) and caught.value.path == str(path)
        assert str(caught.value) == f"{tmp_path}/{expected}" or f"{tmp_path}/{expected}" in str(caught.value)


def test_an_empty_file_is_empty_not_perfetto(tmp_path):
    for name in ("traces-vm-1.jsonl", "rank0.perfetto-trace", "blank.json"):
        path = tmp_path / name
        path.write_bytes(b"" if name != "blank.json" else b"\n  \n")
        with pytest.raises(traceio.EmptyTraceError, match=f"{name}: .*nothing was recorded"):
            traceio.detect_format(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert traceio.read_traces([tmp_path]) == []
    assert sorted(str(w.message).split(":")[0] for w in caught) == sorted(str(p) for p in tmp_path.iterdir())


@pytest.fixture
def demo_like_output(tmp_path: Path) -> Path:
    """Per-rank Perfetto and OTLP-JSON files, an empty OTLP file, and report outputs beside them."""
    out = tmp_path / "sched-trace-out"
    (out / "perfetto").mkdir(parents=True)
    (out / "otel").mkdir()
    files = samples.sample_files()
    (out / "perfetto" / "rank0.perfetto-trace").write_bytes(files["sample.perfetto-trace"])
    (out / "otel" / "traces-vm-100.jsonl").write_bytes(files["sample.jsonl"])
    (out / "otel" / "traces-vm-99.jsonl").write_bytes(b"")  # a parent process that exported nothing
    (out / "report.json").write_text('{"steps": [], "ranks": []}')
    (out / "report.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return out


@pytest.mark.parametrize("command", ["report", "merge", "convert"])
def test_commands_skip_empty_files_and_their_own_outputs_alike(demo_like_output, tmp_path, capsys, command):
    target = demo_like_output / "otel" if command == "convert" else demo_like_output
    out = tmp_path / "result"
    argv = (["report", str(target), "--out", str(out), "--no-png"] if command == "report"
            else [command, str(target), "-o", str(out / "merged.perfetto-trace")])
    out.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = cli.main(argv)
    captured = capsys.readouterr()
    said = captured.err + "".join(str(w.message) for w in caught)
    assert status == 0, captured.err
    assert "traces-vm-99.jsonl" in said and "report.json" not in said
    if command != "report":
        merged = traceio.read_trace(out / "merged.perfetto-trace")
        assert len(merged.events) == len(samples.sample_events())  # each slice once, nothing from reports


def test_merge_reads_a_rank_killed_mid_write_and_says_what_was_cut(demo_like_output, tmp_path, capsys):
    rank = demo_like_output / "perfetto" / "rank0.perfetto-trace"
    rank.write_bytes(rank.read_bytes()[:-7])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = cli.main(["merge", str(rank), "-o", str(tmp_path / "m.perfetto-trace")])
    said = capsys.readouterr().err + "".join(str(w.message) for w in caught)
    assert status == 0
    assert "rank0.perfetto-trace: cut short: read" in said and "dropped the last" in said
