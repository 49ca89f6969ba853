"""However a traced program ends, what it recorded reaches every exporter.

Each test runs scheduler_child.py as a real process with the otel plugin
sending OTLP/HTTP to a real receiver (or writing OTLP-JSON) and the perfetto
plugin writing its file through its exporter process, ends it one way, and
counts what arrived against what the child recorded.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sched_trace import traceio

CHILD = str(Path(__file__).with_name("scheduler_child.py"))
STAGES = 3000


def start_child(tmp_path: Path, ending: str, stages: int, receiver: Any = None, *flags: str,
                exporter_variable: str = "SCHED_TRACE_OTEL_EXPORTER", **env: str) -> subprocess.Popen:
    environ = dict(os.environ, CHILD_OTEL_DIR=str(tmp_path / "otel"), CHILD_PERFETTO_DIR=str(tmp_path / "perfetto"),
                   PYTHONUNBUFFERED="1", **env)
    environ.pop("SCHED_TRACE_OTEL_EXPORTER", None)
    environ.pop("OTEL_TRACES_EXPORTER", None)
    if receiver is not None:
        environ[exporter_variable] = "otlp"
        environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.endpoint
    else:
        environ["SCHED_TRACE_OTEL_EXPORTER"] = "file"
    return subprocess.Popen([sys.executable, CHILD, ending, str(stages), *flags], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_recorded(child: subprocess.Popen) -> None:
    line = child.stdout.readline()
    assert line.startswith("recorded"), line + child.stderr.read()


def finish(child: subprocess.Popen) -> tuple[int, str]:
    try:
        out, err = child.communicate(timeout=60)  # hang guard
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    return child.returncode, out + err


def wait_for_spans(receiver: Any, expected: int, limit: float = 30.0) -> list[int]:
    """The exporter process may still be sending after the child exited: wait (hang guard)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and len(receiver.microbatches()) < expected:
        time.sleep(0.05)
    time.sleep(0.2)  # and nothing more than expected arrives
    return receiver.microbatches()


def perfetto_microbatches(tmp_path: Path, limit: float = 30.0) -> list[Any]:
    """Parse the finished Perfetto file; its exporter process closes it after the child left."""
    deadline = time.monotonic() + limit
    while True:
        files = list((tmp_path / "perfetto").glob("*"))
        try:
            events = [e for f in files for e in traceio.read_trace(f).events if e.name == "run_batch_cpu"]
        except Exception:
            events = None
        if events is not None and (len(events) >= STAGES or time.monotonic() > deadline):
            return sorted(e.microbatch for e in events)
        time.sleep(0.1)


ENDINGS = {
    # ending, signal sent after "recorded", the exit status the program has without sched-trace
    "return": ("return", None, 0),
    "sys_exit": ("sys_exit", None, 0),
    "uncaught_exception": ("raise", None, 1),
    "sigterm": ("wait", signal.SIGTERM, -signal.SIGTERM),
    "sigint": ("wait", signal.SIGINT, -signal.SIGINT),
}


@pytest.mark.parametrize("case", list(ENDINGS))
def test_every_ending_delivers_every_span_to_otlp_and_perfetto(tmp_path, receiver, case):
    ending, signum, status = ENDINGS[case]
    child = start_child(tmp_path, ending, STAGES, receiver)
    wait_recorded(child)
    if signum is not None:
        child.send_signal(signum)
    code, output = finish(child)
    assert code == status, output
    assert sorted(wait_for_spans(receiver, STAGES)) == list(range(STAGES))
    assert perfetto_microbatches(tmp_path) == list(range(STAGES))


def test_sigterm_with_the_standard_otel_traces_exporter_variable(tmp_path, receiver):
    """OTEL_TRACES_EXPORTER=otlp, as a user of any OpenTelemetry SDK sets it."""
    child = start_child(tmp_path, "wait", STAGES, receiver, exporter_variable="OTEL_TRACES_EXPORTER")
    wait_recorded(child)
    child.send_signal(signal.SIGTERM)
    code, output = finish(child)
    assert code == -signal.SIGTERM, output
    assert sorted(wait_for_spans(receiver, STAGES)) == list(range(STAGES))


def test_sigterm_writes_complete_otlp_json_files(tmp_path):
    child = start_child(tmp_path, "wait", STAGES)
    wait_recorded(child)
    child.send_signal(signal.SIGTERM)
    code, output = finish(child)
    assert code == -signal.SIGTERM, output
    (path,) = (tmp_path / "otel").glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole
    assert lines
    names = [e.name for e in traceio.read_trace(path).events]
    assert names.count("run_batch_cpu") == STAGES
    assert perfetto_microbatches(tmp_path) == list(range(STAGES))


def test_sigterm_to_the_process_group_still_delivers_everything(tmp_path, receiver):
    """Slurm and `kill -TERM -PGID` signal the exporter processes too; they finish first."""
    child = start_child(tmp_path, "wait", STAGES, receiver)
    wait_recorded(child)
    os.killpg(child.pid, signal.SIGTERM)
    code, output = finish(child)
    assert code == -signal.SIGTERM, output
    assert sorted(wait_for_spans(receiver, STAGES)) == list(range(STAGES))
    assert perfetto_microbatches(tmp_path) == list(range(STAGES))


@pytest.mark.parametrize("flag", ["--handler", "--handler-after"])
def test_the_programs_own_sigterm_handler_runs_after_the_export(tmp_path, receiver, flag):
    child = start_child(tmp_path, "wait", STAGES, receiver, flag)
    wait_recorded(child)
    child.send_signal(signal.SIGTERM)
    code, output = finish(child)
    assert code == 3 and "own handler" in output, output
    assert sorted(wait_for_spans(receiver, STAGES)) == list(range(STAGES))


def test_opting_out_leaves_sigterm_to_python(tmp_path, receiver):
    """SCHED_TRACE_HANDLE_SIGTERM=0: Python's default action, at once (no export first)."""
    child = start_child(tmp_path, "wait", STAGES, receiver, SCHED_TRACE_HANDLE_SIGTERM="0")
    wait_recorded(child)
    child.send_signal(signal.SIGTERM)
    code, output = finish(child)
    assert code == -signal.SIGTERM, output


def test_sigkill_loses_at_most_the_tail_recorded_last(tmp_path, receiver, record_property):
    """The exporter process keeps what it was handed; only the last drain interval can be lost.

    What arrives is a prefix of what was recorded (no holes), and it contains every
    stage the scheduler process had handed to its exporter process before the SIGKILL
    (its own count, read from the child: no assumption about how fast a busy machine
    drains). The measured loss is printed.
    """
    counter = tmp_path / "counter"
    counter.write_bytes(bytes(16))
    child = start_child(tmp_path, "stream", 0, receiver, CHILD_COUNTER=str(counter))
    wait_recorded(child)
    while len(receiver.microbatches()) < 500:  # the exporter process is up and sending
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)
    recorded_a_second_before = struct.unpack("<q", counter.read_bytes()[:8])[0]
    time.sleep(1.0)
    before_kill, handed = struct.unpack("<qq", counter.read_bytes())
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    recorded = struct.unpack("<q", counter.read_bytes()[:8])[0]
    wait_for_spans(receiver, handed, limit=60.0)  # hang guard: what was handed must arrive
    received = sorted(wait_for_spans(receiver, recorded, limit=2.0))  # and what else was on its way
    assert received == list(range(len(received)))
    assert 0 < handed <= len(received) <= recorded
    rate = (before_kill - recorded_a_second_before) / 1.0
    lost = recorded - len(received)
    record_property("sigkill_lost", lost)
    print(f"SIGKILL: recorded {recorded}, received {len(received)}, lost {lost} "
          f"= {lost / rate * 1000:.0f} ms of recording at {rate:.0f} stages/s")
