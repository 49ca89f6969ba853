"""The scheduler process's handle on its exporter process: start, feed, flush, restart.

The approach of ``sched_trace_otel.process``: ``subprocess`` rather than
``multiprocessing`` (works from fork and spawn children, daemonic pool workers
and torch.distributed ranks). Frames go down the child's stdin; counters and
flush acks come back on its stdout, read by a small thread. If the child dies,
what it had not reported as received is counted as lost and a new child (with
a new file) is started on the next send, up to ``RESTART_LIMIT`` times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Optional

from .settings import PerfettoSettings
from .wire import read_frame, write_frame

log = logging.getLogger("sched_trace.perfetto")
RESTART_LIMIT = 10


class ExporterProcess:
    """One exporter child at a time for this process; ``paths`` lists the files they wrote."""

    def __init__(self, settings: PerfettoSettings, wall_offset_ns: Callable[[], int]) -> None:
        self.settings = settings
        self._offset = wall_offset_ns   # read at each start: a fork child has its own
        self.paths: list[str] = []
        self.sent = 0            # records written to the current child
        self.lost = 0            # records a dead child had not received
        self.restarts = 0
        self.failed_starts = 0
        self.gave_up = False
        self.closed = False
        self._reported: dict[int, dict[str, Any]] = {}  # child pid -> its latest counters
        self._readers: dict[int, threading.Thread] = {}
        self._totals: dict[str, int] = {}               # counters of children that are gone
        self._proc: Optional[subprocess.Popen] = None
        self._write_lock = threading.Lock()
        self._acked = threading.Condition()
        self._ack_seq = 0
        self._seq = 0
        self._pid = os.getpid()
        _live.add(self)

    # --- lifecycle ---------------------------------------------------------------

    def _start(self) -> bool:
        if self.gave_up or self.closed:
            return False
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("SCHED_TRACE_BOOTSTRAP", None)  # the exporter must not trace itself under `sched-trace run`
        try:
            proc = subprocess.Popen([sys.executable, "-m", "sched_trace_perfetto.worker"], bufsize=0,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
            write_frame(proc.stdin.fileno(), ("init", dataclasses.asdict(self.settings), self._pid,
                                              self._offset()))
        except OSError as exc:
            self.failed_starts += 1
            log.warning("sched-trace perfetto: cannot start the exporter process: %s", exc)
            return False
        self._proc, self.sent = proc, 0
        reader = threading.Thread(target=self._read_replies, args=(proc,), name="sched-trace-perfetto-replies",
                                  daemon=True)
        self._readers[proc.pid] = reader
        reader.start()
        return True

    def _ensure(self) -> bool:
        """A live child, started or restarted as needed; False when none can be had."""
        if self._pid != os.getpid():
            self._after_fork()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return True
        if proc is not None:
            self._died(proc)
            if self.restarts >= RESTART_LIMIT:
                self.gave_up = True
                log.error("sched-trace perfetto: exporter process died %d times; giving up", self.restarts + 1)
                return False
            self.restarts += 1
        return self._start()

    def _retire(self, proc: subprocess.Popen) -> None:
        """Fold a finished child's counters into the totals; count what it never received."""
        reader = self._readers.pop(proc.pid, None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(2.0)
        final = self._reported.pop(proc.pid, {})
        self.lost += max(0, self.sent - final.get("received", 0))
        for key in ("received", "slices_written", "write_failed"):
            self._totals[key] = self._totals.get(key, 0) + final.get(key, 0)
        self.sent = 0

    def _died(self, proc: subprocess.Popen) -> None:
        _close(proc.stdin)
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._retire(proc)
        self._proc = None
        with self._acked:
            self._acked.notify_all()

    def _after_fork(self) -> None:
        """A forked child inherited our pipes: let go of them; its own exporter starts on demand."""
        proc = self._proc
        if proc is not None:
            # Unbuffered: closing sends nothing, so the parent's child sees no stray bytes.
            _close(proc.stdin)
            _close(proc.stdout)
            _orphans.append(proc)  # never collected here: its __del__ must not touch the parent's child
        self._pid, self._proc, self.sent, self.lost, self.restarts, self.gave_up = os.getpid(), None, 0, 0, 0, False
        self._write_lock, self._acked, self._ack_seq, self._seq = threading.Lock(), threading.Condition(), 0, 0
        self._reported, self._readers, self._totals, self.paths = {}, {}, {}, []

    # --- traffic -----------------------------------------------------------------

    def send(self, payload: bytes, count: int) -> bool:
        """Called on the exporter thread with one frame of ``count`` events; False when no
        exporter process could take it."""
        with self._write_lock:
            if not self._ensure():
                return False
            try:
                write_frame(self._proc.stdin.fileno(), payload)
            except (OSError, ValueError):  # this batch counts as failed, not as lost in the child
                self._died(self._proc)
                return False
            self.sent += count
            return True

    def _read_replies(self, proc: subprocess.Popen) -> None:
        while True:
            try:
                reply = read_frame(proc.stdout)
            except Exception:
                reply = None
            if reply is None:
                break
            with self._acked:
                counters = self._reported[proc.pid] = reply[-1]
                path = counters.get("path")
                if path is not None and path not in self.paths:
                    self.paths.append(path)
                if reply[0] == "ack" and reply[1] > self._ack_seq:
                    self._ack_seq = reply[1]
                self._acked.notify_all()
        with self._acked:
            self._acked.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until the child wrote everything sent so far (its ack)."""
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            proc = self._proc
            if proc is None or proc.poll() is not None or self._pid != os.getpid():
                return proc is None and not self.sent
            self._seq += 1
            seq = self._seq
            try:
                write_frame(proc.stdin.fileno(), ("flush", seq))
            except (OSError, ValueError):
                self._died(proc)
                return False
        finally:
            self._write_lock.release()
        with self._acked:
            return self._acked.wait_for(
                lambda: self._ack_seq >= seq or proc.poll() is not None, max(0.0, deadline - time.monotonic())
            ) and self._ack_seq >= seq

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child once it wrote everything; wait while it makes progress.

        Like the writer thread's shutdown, it gives up (and kills the child) only
        when a whole ``timeout`` passes with nothing more received.
        """
        self.closed = True  # no child is started after this, whatever the exporter thread still sends
        if not self._write_lock.acquire(timeout=timeout):
            # The exporter thread is stuck writing to a child that reads nothing: killing
            # the child breaks its pipe, the write fails (counted lost) and lets go of the lock.
            self.kill_for_test()
            if not self._write_lock.acquire(timeout=timeout):
                return
        with _held(self._write_lock):
            proc, self._proc = self._proc, None
            if proc is None or self._pid != os.getpid():
                return
            try:
                write_frame(proc.stdin.fileno(), ("stop",))
            except (OSError, ValueError):
                pass
            _close(proc.stdin)
            progress = None
            while True:
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    now = self._reported.get(proc.pid, {}).get("received")
                    if now == progress:
                        log.warning("sched-trace perfetto: exporter process stuck; killing it")
                        proc.kill()
                        proc.wait()
                        break
                    progress = now
            self._retire(proc)
        _live.discard(self)

    def stats(self) -> dict[str, Any]:
        proc = self._proc
        current = self._reported.get(proc.pid, {}) if proc is not None else {}
        totals: dict[str, Any] = {key: self._totals.get(key, 0) + current.get(key, 0)
                                  for key in ("slices_written", "write_failed")}
        totals.update(lost_in_exporter=self.lost, exporter_restarts=self.restarts,
                      exporter_failed_starts=self.failed_starts, exporter_pid=proc.pid if proc is not None else 0)
        return totals

    def kill_for_test(self) -> None:
        """Kill the exporter process (tests of restart and loss accounting; a stuck child)."""
        proc = self._proc
        if proc is not None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """Release a lock acquired before the ``with``."""
    try:
        yield
    finally:
        lock.release()


def _close(stream: Any) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass


_live: "weakref.WeakSet[ExporterProcess]" = weakref.WeakSet()
_orphans: list = []


def _release_after_fork() -> None:
    for exporter in list(_live):
        exporter._after_fork()


os.register_at_fork(after_in_child=_release_after_fork)
