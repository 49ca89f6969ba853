"""The scheduler process's handle on one exporter process: start, restart, send, flush, close, counters.

``subprocess`` rather than ``multiprocessing``: it works the same from fork and
spawn children, from daemonic pool workers (which may not have multiprocessing
children) and from torch.distributed ranks. A small thread reads the child's
answers. If the child dies, what it had not handled is counted as lost and a new
child is started on the next send, up to ``restart_limit`` times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Optional

from .frames import FrameReader, write_control, write_control_by, write_events

log = logging.getLogger("sched_trace")
CHILD_MODULE = "sched_trace._exporter.child"
#: Counters of the running child only, never summed over children (gauges, names).
PIPE_SIZE = 1 << 20
LIVE_KEYS = frozenset(("path", "queued", "spans_waiting", "pending", "exporter_pid"))
# exporter_cpu_s sums over children (each reports its own total), like the other counters.


class ExporterProcess:
    """One exporter child at a time for this process.

    ``init`` returns the ``init`` frame for a new child (read at each start: a fork
    child or a restart gets current values); ``on_start`` runs before it (the caller
    resets what the old child knew).
    """

    def __init__(self, label: str, init: Callable[[], tuple], restart_limit: int = 10,
                 on_start: Callable[[], None] = lambda: None) -> None:
        self.label = label
        self.restart_limit = restart_limit
        self._init, self._on_start = init, on_start
        self.sent = 0            # events written to the current child
        self.lost = 0            # events a dead child had not handled
        self.unconfirmed = 0     # of those, events a child still held at the shutdown deadline
        self.restarts = 0
        self.failed_starts = 0
        self.gave_up = False
        self.closed = False
        self.texts: dict[str, list[str]] = {}  # every text counter value any child reported (its file)
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._reported: dict[int, dict[str, Any]] = {}  # child pid -> its latest counters
        self._readers: dict[int, threading.Thread] = {}
        self._totals: dict[str, Any] = {}               # counters of children that are gone
        self._proc: Optional[subprocess.Popen] = None
        self._write_lock = threading.Lock()
        self._acked = threading.Condition()
        self._ack_seq = 0
        self._seq = 0
        self._pid = os.getpid()
        self._child_died = False  # the next start is a restart (counted, limited)

    # --- lifecycle ------------------------------------------------------------------

    def _start(self) -> bool:
        if self.gave_up or self.closed:
            return False
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("SCHED_TRACE_BOOTSTRAP", None)  # the exporter must not trace itself under `sched-trace run`
        try:
            self._on_start()
            proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE], bufsize=0, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=env, close_fds=True)
            _widen(proc.stdin.fileno())
            # Non-blocking: a frame goes in without the exporter thread letting go of the GIL
            # where the pipe has room (frames.write_events); where it has none, it waits.
            os.set_blocking(proc.stdin.fileno(), False)
            write_control(proc.stdin.fileno(), self._init())
        except OSError as exc:
            self.failed_starts += 1
            log.warning("sched-trace %s: cannot start the exporter process: %s", self.label, exc)
            return False
        self._proc, self.sent = proc, 0
        reader = threading.Thread(target=self._read_replies, args=(proc,), daemon=True,
                                  name=f"sched-trace-{self.label}-replies")
        self._readers[proc.pid] = reader
        reader.start()
        return True

    def _ensure(self) -> bool:
        """A live child, started or restarted as needed; False when none can be had."""
        if self._pid != os.getpid():
            self._after_fork()
        proc = self._proc
        if proc is not None and self._alive(proc):
            return True
        if proc is not None:
            self._died(proc)
        if self.closed:
            return False
        if self._child_died:  # also when a broken pipe found the death first (send, flush)
            if self.restarts >= self.restart_limit:
                self.gave_up = True
                log.error("sched-trace %s: exporter process died %d times; giving up", self.label, self.restarts + 1)
                return False
            self.restarts += 1
            self._child_died = False
        return self._start()

    def _reading(self) -> bool:
        """The current child is there to read a frame, as far as can be told without a system
        call: its reader thread has not met the end of its output (a child that died closed
        it). Not ``poll()``: its ``waitpid`` lets go of the GIL, a forced switch for the
        scheduler thread per frame. A death not seen yet fails the write (EPIPE) instead."""
        proc = self._proc
        if proc is None or self._pid != os.getpid() or proc.returncode is not None:
            return False
        reader = self._readers.get(proc.pid)
        return reader is not None and reader.is_alive()

    def _alive(self, proc: subprocess.Popen) -> bool:
        # poll() answers None while another thread polls or waits (Popen's waitpid lock), even
        # for a dead child; the reader thread meets end of file when the child is gone.
        reader = self._readers.get(proc.pid)
        return proc.poll() is None and (reader is None or reader.is_alive())

    def _retire(self, proc: subprocess.Popen, wait: float = 2.0) -> None:
        """Fold a finished child's counters into the totals; count what it never handled."""
        reader = self._readers.pop(proc.pid, None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(wait)
        final = dict(self._reported.pop(proc.pid, {}))
        # Spans a child still held for retry when it went away (killed, or past the deadline)
        # never reach the receiver as far as anyone knows: undelivered, so the span identity holds.
        stranded = final.get("spans_waiting", 0) - final.get("spans_undelivered", 0)
        if stranded > 0:
            final["spans_undelivered"] = final.get("spans_undelivered", 0) + stranded
        unhandled = max(0, self.sent - final.get("handled", 0))
        self.lost += unhandled
        if proc.returncode is None:  # still finishing past the deadline: not confirmed, so counted
            self.unconfirmed += unhandled
        for key, value in final.items():
            if key not in LIVE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._totals[key] = self._totals.get(key, 0) + value
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
        self._child_died = True
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
        self.lost, self.unconfirmed, self.restarts, self.failed_starts, self.gave_up = 0, 0, 0, 0, False
        self.sent = 0
        self.texts = {}
        self._reset_state()

    # --- traffic --------------------------------------------------------------------

    def send(self, payload: bytes, count: int) -> bool:
        """One events frame of ``count`` events (from the exporter thread); False when no
        exporter process could take it. Waits while the pipe is full."""
        with self._write_lock:
            # A child can die between the liveness check and the write: one retry on a new one.
            for _attempt in (1, 2):
                if not self._reading() and not self._ensure():
                    return False
                try:
                    write_events(self._proc.stdin.fileno(), payload, held=True)
                except (OSError, ValueError):
                    self._died(self._proc)
                    continue
                self.sent += count
                return True
            return False

    def _read_replies(self, proc: subprocess.Popen) -> None:
        reader = FrameReader(proc.stdout.fileno())
        while True:
            try:
                frame = reader.read()
            except Exception:
                frame = None
            if frame is None:
                break
            message = frame[1]
            counters = message[-1]
            for key, value in counters.items():
                if isinstance(value, str) and value not in self.texts.setdefault(key, []):
                    self.texts[key].append(value)
            with self._acked:
                self._reported[proc.pid] = counters
                if message[0] == "ack" and message[1] > self._ack_seq:
                    self._ack_seq = message[1]
                self._acked.notify_all()
        with self._acked:
            self._acked.notify_all()

    def flush(self, timeout: float) -> bool:
        """Ask the child to export what it was sent, then its own flush; wait for its ack."""
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            proc = self._proc
            if proc is None or not self._alive(proc) or self._pid != os.getpid():
                return proc is None and not self.sent
            self._seq += 1
            seq = self._seq
            # The child gets less time than we wait, so its ack (with counters) still reaches us.
            message = ("flush", seq, max(0.05, 0.7 * (deadline - time.monotonic())))
            try:
                if not write_control_by(proc.stdin.fileno(), message, deadline):
                    return False  # the child reads nothing (stopped, or far behind)
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
        """Stop the child once it exported what it holds, within ``timeout``; no child starts after this.

        A child past the deadline is left to finish on its own (it has its stop frame and
        the end of stdin): killing it would lose what it holds. Only a child that blocks
        the exporter thread (it reads nothing) is killed, to free that thread, and a child
        that is stopped (SIGSTOP): it would never finish, and would be left behind stopped.
        """
        self.closed = True
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            self.kill()  # its pipe breaks, the stuck write fails and lets go of the lock
            if not self._write_lock.acquire(timeout=max(0.1, deadline - time.monotonic())):
                return
        with _held(self._write_lock):
            proc, self._proc = self._proc, None
            if proc is None or self._pid != os.getpid():
                return
            try:  # a child too far behind to take the stop frame still stops at the end of stdin
                write_control_by(proc.stdin.fileno(), ("stop", max(0.05, 0.7 * (deadline - time.monotonic()))),
                                 deadline)
            except (OSError, ValueError):
                pass
            _close(proc.stdin)
            finished = _wait(proc, deadline - time.monotonic())
            if not finished and _stopped(proc.pid):
                # Stopped (SIGSTOP, a debugger): it would never finish, and would outlive us stopped.
                log.warning("sched-trace %s: exporter process %d is stopped at the shutdown deadline; "
                            "killed, what it held is counted as lost", self.label, proc.pid)
                proc.kill()
                finished = _wait(proc, 1.0)
            self._retire(proc, wait=max(0.0, deadline - time.monotonic()) if finished else 0.0)
            if not finished:
                log.warning("sched-trace %s: exporter process %d still exporting at the shutdown deadline; "
                            "it finishes on its own", self.label, proc.pid)
        _live.discard(self)

    def kill(self) -> None:
        """Kill the exporter process now; what it had not handled is counted as lost."""
        proc = self._proc
        if proc is not None:
            proc.kill()
            proc.wait()

    # --- counters ---------------------------------------------------------------------

    def current(self) -> dict[str, Any]:
        """The running child's latest counters."""
        proc = self._proc
        return self._reported.get(proc.pid, {}) if proc is not None else {}

    @property
    def pid(self) -> int:
        proc = self._proc
        return proc.pid if proc is not None else 0

    def stats(self) -> dict[str, Any]:
        current = self.current()
        totals: dict[str, Any] = dict(self._totals)
        for key, value in current.items():
            if key in LIVE_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                totals[key] = value
            else:
                totals[key] = totals.get(key, 0) + value
        totals.update(lost_in_exporter=self.lost, unconfirmed_at_shutdown=self.unconfirmed,
                      exporter_restarts=self.restarts, exporter_failed_starts=self.failed_starts,
                      exporter_pid=self.pid)
        return totals


def _widen(fd: int) -> None:
    """A 1 MiB pipe where Linux allows it: bursts wait in the kernel, where a scheduler's SIGKILL spares them."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (ImportError, OSError):  # another platform, or above /proc/sys/fs/pipe-max-size
        pass


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (its state in /proc: T, or t under a tracer); False where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


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
