"""``process = true`` (the default): encoding and writing in a separate exporter process."""

from __future__ import annotations

import enum
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

import sched_trace
from sched_trace import ConfigError, traceio
from sched_trace._events import NO_ATTRS, BatchEvent, RankInfo, StageEvent
from sched_trace.commands.level import pid_running
from sched_trace_perfetto import PerfettoPlugin
from sched_trace_perfetto.settings import parse

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")


class Phase(enum.IntEnum):
    PREFILL = 1


class Request:
    rid = "req-7"  # in "requests" only the id is written, never the object's text

    def __str__(self) -> str:
        return "req-7"


def _events() -> list:
    """End events with every kind of value the encoders treat specially."""
    rank = RankInfo("host-a", 4242, 7, "Scheduler", tp_rank=0, pp_rank=1, dp_rank=0,
                    extra=(("rank", 1), ("world_size", 2)))
    other = RankInfo("host-a", 4242, 8, "Worker", pp_rank=2)
    attrs = {"queue_depth": 3, "phase": Phase.PREFILL, "request": Request(), "nested": {"ids": [1, "b", 2.5]},
             "missing": None, "ratio": 0.25, "flag": True, "requests": (Request(), "r2")}
    events = []
    for step in range(3):
        start = 1_700_000_000_000_000_000 + step * 1000
        events.append(StageEvent("forward", 2, start, start + 10, rank, step % 2, step, 8, attrs, None, 10 + step, 1))
        events.append(StageEvent("send", 3, start + 20, start + 30, other, (step, "mb"), step, None, NO_ATTRS,
                                 ValueError("boom"), 20 + step, 0))
        events.append(BatchEvent("step", 1, start, start + 40, rank, None, step, 16, {}, None, 30 + step, 0))
    return events


def _write(directory: Path, process: bool) -> Path:
    plugin = PerfettoPlugin(directory=str(directory), process=process)
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    for event in _events():
        (plugin.sched_trace_batch_end if event.kind == "batch" else plugin.sched_trace_stage_end)(event)
    sched_trace.shutdown()
    (path,) = directory.iterdir()
    return path


def _without_clock_snapshot(path: Path) -> bytes:
    # The snapshot records when the file was opened; everything else is determined by the events.
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    kept = pb.Trace()
    kept.packet.extend(p for p in trace.packet if not p.HasField("clock_snapshot"))
    return kept.SerializeToString()


def test_exporter_process_writes_the_bytes_the_writer_thread_writes(tmp_path):
    in_process = _write(tmp_path / "process", process=True)
    in_thread = _write(tmp_path / "thread", process=False)
    assert in_process.name == in_thread.name
    assert _without_clock_snapshot(in_process) == _without_clock_snapshot(in_thread)
    forward, send = traceio.read_trace(in_process).events[:2]
    assert forward.attrs["request"] == "req-7" and forward.attrs["phase"] == 1
    assert forward.attrs["requests"] == ["req-7", "r2"] and "missing" not in forward.attrs
    assert str(send.error) == "ValueError: boom" and send.microbatch == [0, "mb"]


def test_chrome_files_match_too(tmp_path):
    texts = []
    for process in (True, False):
        plugin = PerfettoPlugin(directory=str(tmp_path / str(process)), format="chrome", process=process)
        sched_trace.configure(level=9, plugins=[plugin], autoload=False)
        for event in _events():
            plugin.sched_trace_stage_end(event)
        sched_trace.shutdown()
        texts.append(Path(plugin.paths[0]).read_text())
    assert texts[0] == texts[1]


def _decode_steps(count: int) -> None:
    @sched_trace.stage("decode", level=2, batch_size="size")
    def decode(size: int) -> None:
        pass

    for step in range(count):
        decode(step % 5)


def _ten_steps_flushed(tmp_path) -> tuple[PerfettoPlugin, int]:
    """The perfetto plugin in an exporter process, ten steps written and flushed; its pid."""
    plugin = PerfettoPlugin(directory=str(tmp_path))
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    _decode_steps(10)
    sched_trace.flush()
    return plugin, plugin.sched_trace_collect_stats()["exporter_pid"]


def test_a_separate_process_does_the_writing_and_is_gone_after_shutdown(tmp_path):
    plugin, child = _ten_steps_flushed(tmp_path)
    assert child not in (0, os.getpid())
    assert len(traceio.read_trace(plugin.paths[0]).events) == 10  # flushed means on disk
    sched_trace.shutdown()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_killed_exporter_process_is_counted_and_replaced(tmp_path):
    plugin = PerfettoPlugin(directory=str(tmp_path))
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    _decode_steps(100)
    sched_trace.flush()
    first = plugin.sched_trace_collect_stats()["exporter_pid"]
    plugin.processor.process.kill()
    _decode_steps(50)
    sched_trace.flush()
    stats = plugin.sched_trace_collect_stats()
    assert stats["exporter_restarts"] == 1 and stats["exporter_pid"] not in (0, first)
    sched_trace.shutdown()
    stats = plugin.sched_trace_collect_stats()
    assert stats["lost_in_exporter"] == 0 and stats["slices_written"] == 150 and stats["files"] == 2
    # The replacement starts a file of its own: the dead one's may end in a torn packet.
    assert [len(traceio.read_trace(p).events) for p in plugin.paths] == [100, 50]


def _child_records(directory: str) -> None:
    _decode_steps(7)  # no shutdown: multiprocessing leaves by os._exit, its finalizers must stop us


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("process", [True, False])
def test_multiprocessing_fork_children_write_their_own_files(tmp_path, process):
    plugin = PerfettoPlugin(directory=str(tmp_path), process=process)
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    _decode_steps(3)
    sched_trace.flush()
    child = multiprocessing.get_context("fork").Process(target=_child_records, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    _decode_steps(2)
    sched_trace.shutdown()
    counts = {traceio.read_trace(p).events[0].rank.pid: len(traceio.read_trace(p).events) for p in tmp_path.iterdir()}
    assert counts == {os.getpid(): 5, child.pid: 7}
    assert plugin.paths == [str(p) for p in tmp_path.iterdir() if f"pid{os.getpid()}" in p.name]


def test_process_setting_is_validated():
    with pytest.raises(ConfigError, match="'yes' is a str; expected a bool"):
        parse({"process": "yes"})
    with pytest.raises(ConfigError, match="SCHED_TRACE_PERFETTO_PROCESS.*'maybe'"):
        parse({}, environ={"SCHED_TRACE_PERFETTO_PROCESS": "maybe"})
    assert parse({}, environ={}).process is True
    assert parse({"process": True}, environ={"SCHED_TRACE_PERFETTO_PROCESS": "off"}).process is False


def _stopped_then_shut_down(tmp_path, steps: int) -> PerfettoPlugin:
    """Ten steps written, the exporter process stopped (SIGSTOP), ``steps`` more, then the
    plugin stopped within half a second: no stopped exporter process may be left behind."""
    plugin, pid = _ten_steps_flushed(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    _decode_steps(steps)
    plugin.stop(timeout=0.5)
    assert plugin.sched_trace_collect_stats()["exporter_pid"] == 0
    assert not pid_running(pid)  # killed and reaped: not even stopped, not a zombie
    return plugin


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_stopped_exporter_process_is_killed_at_shutdown_not_left_behind(tmp_path):
    # The pipe takes the few events sent after the stop, so nothing blocks the exporter
    # thread: shutdown's deadline passes waiting for a child that can never finish.
    plugin = _stopped_then_shut_down(tmp_path, 10)
    stats = plugin.sched_trace_collect_stats()
    assert stats["slices_written"] == 10  # before the stop: written, and reported
    assert stats["slices_written"] + stats["lost_in_exporter"] + stats["failed"] + stats["abandoned"] == 20
    sched_trace.shutdown()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_shutdown_does_not_hang_on_an_exporter_process_that_stopped_reading(tmp_path):
    # 20,000 steps: far more than the pipe holds, so the exporter thread blocks writing;
    # stop() returns all the same (the stuck child is killed, so that write fails).
    plugin = _stopped_then_shut_down(tmp_path, 20_000)
    # The unblocked exporter thread counts what it still held as failed (no child starts
    # after close); every event is accounted for once it has.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = plugin.sched_trace_collect_stats()
        if stats["slices_written"] + stats["lost_in_exporter"] + stats["failed"] + stats["abandoned"] == 20_010:
            break
        time.sleep(0.05)
    assert stats["slices_written"] + stats["lost_in_exporter"] + stats["failed"] + stats["abandoned"] == 20_010
    assert stats["slices_written"] >= 10 and stats["exporter_restarts"] == 0
    sched_trace.shutdown()


def test_the_exporter_process_naps_between_frames_instead_of_waiting_to_be_woken(tmp_path):
    # A reader waiting in the kernel (a pipe read, poll) has to be woken by the exporter
    # thread's write, which pays for it with the GIL held (docs/performance.md, "The
    # exporter process naps"); the exporter process looks at its pipe between naps
    # instead, so that is never where it sleeps.
    plugin, pid = _ten_steps_flushed(tmp_path)
    where = []
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/wchan") as wchan:
                where.append(wchan.read())
        except OSError:
            break
        time.sleep(0.002)
    sched_trace.shutdown()
    asleep = [w for w in where if w not in ("", "0")]
    if not asleep:
        pytest.skip("this kernel does not say where a process sleeps (/proc/<pid>/wchan)")
    assert not [w for w in asleep if "pipe" in w or "poll" in w or "select" in w], asleep
    assert any("sleep" in w for w in asleep), asleep
    assert len(traceio.read_trace(plugin.paths[0]).events) == 10
