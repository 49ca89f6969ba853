"""The scheduler process's handle on its exporter process: start, feed, flush, restart.

``subprocess`` rather than ``multiprocessing``: it works the same from fork
and spawn children, from daemonic pool workers (which may not have
multiprocessing children) and from torch.distributed ranks. Frames go down the
child's stdin; counters and flush acks come back on its stdout, read by a
small thread. If the child dies, the records it had not processed are counted
as lost and a new child is started on the next send (up to ``restart_limit``).
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Optional

from .settings import OtelSettings
from .wire import read_frame, write_frame

log = logging.getLogger("sched_trace.otel")


class ExporterProcess:
    def __init__(self, settings: OtelSettings, meta: dict[str, Any]) -> None:
        self.settings = settings
        self.meta = meta
        self.ranks: dict[int, dict[str, Any]] = {}   # every rank announced, resent to a new child
        self.sent = 0            # records written to the current child
        self.lost = 0            # records a dead child had not processed
        self.restarts = 0
        self.failed_starts = 0
        self.gave_up = False
        self._reported: dict[int, dict[str, int]] = {}  # child pid -> its latest counters
        self._readers: dict[int, threading.Thread] = {}
        self._totals: dict[str, int] = {}             # counters of children that are gone
        self._proc: Optional[subprocess.Popen] = None
        self._write_lock = threading.Lock()
        self._acked = threading.Condition()
        self._ack_seq = 0
        self._seq = 0
        self._pid = os.getpid()
        _live.add(self)

    # --- lifecycle ---------------------------------------------------------------

    def _start(self) -> bool:
        if self.gave_up:
            return False
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("SCHED_TRACE_BOOTSTRAP", None)  # the exporter must not trace itself under `sched-trace run`
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sched_trace_otel.worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
            )
            write_frame(proc.stdin, ("init", self.settings.as_dict(), self.meta))
            if self.ranks:
                write_frame(proc.stdin, ("events", sorted(self.ranks.items()), []))
        except OSError as exc:
            self.failed_starts += 1
            log.warning("sched-trace otel: cannot start the exporter process: %s", exc)
            return False
        self._proc, self.sent = proc, 0
        reader = threading.Thread(target=self._read_replies, args=(proc,), name="sched-trace-otel-replies",
                                  daemon=True)
        self._readers[proc.pid] = reader
        reader.start()
        return True

    @property
    def child_stats(self) -> dict[str, int]:
        proc = self._proc
        return self._reported.get(proc.pid, {}) if proc is not None else {}

    def _retire(self, proc: subprocess.Popen) -> None:
        """Fold a finished child's counters into the totals; count what it never processed."""
        reader = self._readers.pop(proc.pid, None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(2.0)
        final = self._reported.pop(proc.pid, {})
        processed = final.get("records", 0) + final.get("queue_dropped", 0)
        self.lost += max(0, self.sent - processed)
        for key, value in final.items():
            if key not in ("queued", "spans_waiting"):
                self._totals[key] = self._totals.get(key, 0) + value
        self.sent = 0

    def _ensure(self) -> bool:
        if self._pid != os.getpid():
            self._after_fork()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return True
        if proc is not None:
            self._died(proc)
            if self.restarts >= self.settings.restart_limit:
                self.gave_up = True
                log.error("sched-trace otel: exporter process died %d times; giving up", self.restarts + 1)
                return False
            self.restarts += 1
        return self._start()

    def _died(self, proc: subprocess.Popen) -> None:
        self._close_pipe(proc)
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
        """A forked child inherited our pipe: let go of it and start its own exporter."""
        if self._proc is not None and self._proc.stdin is not None:
            try:
                os.close(self._proc.stdin.fileno())
            except OSError:
                pass
        from .pipeline import process_meta

        self._pid, self._proc, self.sent, self.lost, self.restarts = os.getpid(), None, 0, 0, 0
        # Span ids continue from the parent's counter after fork: a new salt keeps them unique.
        self.meta = process_meta(self.settings, self._pid, random.getrandbits(31) | (1 << 31))
        self._write_lock, self._acked = threading.Lock(), threading.Condition()
        self._reported, self._readers, self._totals, self.ranks = {}, {}, {}, {}

    @staticmethod
    def _close_pipe(proc: subprocess.Popen) -> None:
        try:
            proc.stdin.close()
        except OSError:
            pass

    # --- traffic -----------------------------------------------------------------

    def send(self, new_ranks: list, records: list) -> bool:
        """Called on the exporter thread; False when no exporter process could take them."""
        with self._write_lock:
            for index, attrs in new_ranks:
                self.ranks[index] = attrs
            if not self._ensure():
                return False
            try:
                write_frame(self._proc.stdin, ("events", new_ranks, records))
            except (OSError, ValueError):
                self.lost += len(records)
                self._died(self._proc)
                return False
            self.sent += len(records)
            return True

    def _read_replies(self, proc: subprocess.Popen) -> None:
        while True:
            try:
                reply = read_frame(proc.stdout)
            except Exception:
                reply = None
            if reply is None:
                break
            if reply[0] == "stats":
                self._reported[proc.pid] = reply[1]
            elif reply[0] == "ack":
                with self._acked:
                    self._reported[proc.pid] = reply[2]
                    self._ack_seq = max(self._ack_seq, reply[1]) if reply[1] >= 0 else self._ack_seq
                    self._acked.notify_all()
        with self._acked:
            self._acked.notify_all()

    def flush(self, timeout: float) -> bool:
        """Ask the child to export what it holds; wait for its ack."""
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            if self._proc is None or self._proc.poll() is not None:
                return self._proc is None and not self.sent
            self._seq += 1
            seq = self._seq
            try:
                # The child gets less time than we wait, so its ack (with counters) still reaches us.
                write_frame(self._proc.stdin, ("flush", seq, max(0.05, 0.7 * (deadline - time.monotonic()))))
            except (OSError, ValueError):
                self._died(self._proc)
                return False
            proc = self._proc
        finally:
            self._write_lock.release()
        with self._acked:
            return self._acked.wait_for(
                lambda: self._ack_seq >= seq or proc.poll() is not None, max(0.0, deadline - time.monotonic())
            ) and self._ack_seq >= seq

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child after it flushed; kill it if it does not finish in time."""
        with self._write_lock:
            proc, self._proc = self._proc, None
            if proc is None or self._pid != os.getpid():
                return
            try:
                write_frame(proc.stdin, ("stop", timeout))
            except (OSError, ValueError):
                pass
            self._close_pipe(proc)
            try:
                proc.wait(timeout + 1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._retire(proc)
        _live.discard(self)

    def stats(self) -> dict[str, int]:
        totals = dict(self._totals)
        for key, value in self.child_stats.items():
            totals[key] = totals.get(key, 0) + value
        totals.update(lost_in_exporter=self.lost, exporter_restarts=self.restarts,
                      exporter_failed_starts=self.failed_starts,
                      exporter_pid=self._proc.pid if self._proc is not None else 0)
        return totals

    def kill_for_test(self) -> None:
        """Kill the exporter process (tests of restart and loss accounting)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()


_live: "weakref.WeakSet[ExporterProcess]" = weakref.WeakSet()


def _release_after_fork() -> None:
    for exporter in list(_live):
        exporter._after_fork()


os.register_at_fork(after_in_child=_release_after_fork)
