"""Nothing lost: a backlog at shutdown, a fork, a second configure in one process."""

from __future__ import annotations

import os
import time

import pytest

import sched_trace
from sched_trace import traceio
from sched_trace_perfetto import PerfettoPlugin


def _decode_steps(count: int) -> None:
    @sched_trace.stage("decode", level=2, batch_size="size")
    def decode(size: int) -> None:
        pass

    for step in range(count):
        decode(step % 5)


def test_shutdown_keeps_its_deadline_and_counts_a_backlog_it_cannot_wait_for(tmp_path):
    plugin = PerfettoPlugin(directory=str(tmp_path))
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    _decode_steps(20_000)
    sched_trace.shutdown(timeout=0.001)
    # Every event is handed to the exporter process, or counted as abandoned (still
    # buffered) or failed (a batch in flight when the process was let go); the process
    # writes what it was handed even after shutdown stopped waiting for it.
    deadline = time.monotonic() + 30
    while plugin.sched_trace_collect_stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = plugin.sched_trace_collect_stats()
    assert stats["sent"] + stats["abandoned"] + stats["failed"] == stats["received"] == 20_000
    assert stats["slices_written"] + stats["lost_in_exporter"] == stats["sent"]


def test_shutdown_writes_a_backlog_within_its_timeout(tmp_path):
    plugin = PerfettoPlugin(directory=str(tmp_path))
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    _decode_steps(20_000)
    sched_trace.shutdown(timeout=60)
    assert plugin.sched_trace_collect_stats()["slices_written"] == 20_000
    (path,) = tmp_path.iterdir()
    assert len(traceio.read_trace(path).events) == 20_000


def test_configure_again_after_shutdown_starts_a_new_file(tmp_path):
    plugin = PerfettoPlugin(directory=str(tmp_path))
    for _ in range(2):
        sched_trace.configure(level=9, plugins=[plugin], autoload=False)
        _decode_steps(10)
        sched_trace.shutdown()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and plugin.paths == [str(p) for p in sorted(files, key=lambda p: len(p.name))]
    assert [len(traceio.read_trace(p).events) for p in files] == [10, 10]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_writes_its_own_file(tmp_path):
    plugin = PerfettoPlugin(directory=str(tmp_path))
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    _decode_steps(3)
    sched_trace.flush()
    pid = os.fork()
    if pid == 0:  # the child: its own events, its own file, then leave without atexit
        code = 1
        try:
            _decode_steps(7)
            sched_trace.shutdown()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _decode_steps(2)
    sched_trace.shutdown()
    counts = {traceio.read_trace(p).events[0].rank.pid: len(traceio.read_trace(p).events) for p in tmp_path.iterdir()}
    assert counts == {os.getpid(): 5, pid: 7}
