"""A plugin's exporter subprocess: the frames on its pipes, its lifecycle, and its ``main``.

``subprocess`` rather than ``multiprocessing``: it works the same from fork
and spawn children, from daemonic pool workers (which may not have
multiprocessing children) and from torch.distributed ranks. The parent writes
length-prefixed pickled frames to the child's stdin; the child answers on its
stdout with ``("stats", counters)`` now and then and ``("ack", seq, counters)``
for each ``("flush", seq, ...)`` (``seq`` -1 when it stops). A small thread reads
the answers. If the child dies, what it had not processed is counted as lost
and a new child is started on the next send, up to ``restart_limit`` times.

What the frames mean (init, events, flush, stop) belongs to each plugin: it
subclasses :class:`ExporterProcess` and passes its ``serve`` to
:func:`worker_main`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, BinaryIO, Callable, Iterator, Optional

from .recorder import deprioritize_exporter_process

_HEADER = struct.Struct("<I")


# --- frames ------------------------------------------------------------------------


def write_frame(fd: int, message: Any) -> int:
    """Write ``message`` (a pickled payload as bytes, or any picklable) whole to ``fd``.

    Straight to the descriptor, no user-space buffer: a fork in the middle of a
    write leaves nothing half-buffered for the child to send a second time.
    """
    payload = message if isinstance(message, bytes) else pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    total = len(view)
    while view:
        view = view[os.write(fd, view):]
    return total


def write_small_frame(fd: int, message: Any, deadline: float) -> bool:
    """Write a control frame (flush, stop) unless the pipe stays full until ``deadline``.

    A pipe that select() calls writable takes PIPE_BUF bytes at once, so a frame that
    small never blocks: a stopped child cannot hold a shutdown past its deadline.
    """
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if _HEADER.size + len(payload) > select.PIPE_BUF:
        write_frame(fd, payload)
        return True
    try:
        _, writable, _ = select.select([], [fd], [], max(0.0, deadline - time.monotonic()))
    except (OSError, ValueError):
        return False
    if not writable:
        return False
    write_frame(fd, payload)
    return True


def read_frame(stream: BinaryIO) -> Optional[Any]:
    """The next message, or None at end of stream."""
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    payload = _read_exact(stream, _HEADER.unpack(header)[0])
    return None if payload is None else pickle.loads(payload)


def _read_exact(stream: BinaryIO, size: int) -> Optional[bytes]:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def reply(fd: int, message: Any) -> None:
    """Answer the scheduler process; if it is gone, keep going with what we hold."""
    try:
        write_frame(fd, message)
    except OSError:
        pass


# --- the child's side ----------------------------------------------------------------


def worker_main(serve: Callable[[BinaryIO, int], int], label: str) -> None:
    """Run ``serve(stdin, protocol_fd)`` as an exporter process, then leave by ``os._exit``."""
    # The protocol owns the real stdout; anything printed goes to stderr instead.
    # Ctrl-C and a group SIGTERM (Slurm, `kill -TERM -PGID`) reach this process too: it
    # ignores both and stops at end of stdin, after exporting what it was handed.
    deprioritize_exporter_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = 1
    try:
        code = serve(sys.stdin.buffer, protocol_out)
    except BaseException as exc:  # report, then still skip finalization below
        sys.stderr.write(f"sched-trace {label} exporter: {exc!r}\n")
    finally:
        try:
            sys.stderr.flush()
        except OSError:
            pass
        # A reader thread may sit in a read on stdin (finalization would then abort with
        # "_enter_buffered_busy"), and teardown only costs the waiting scheduler time.
        os._exit(code)


# --- the parent's side ---------------------------------------------------------------


class ExporterProcess:
    """One exporter child at a time for this process; subclasses say what the frames hold."""

    worker_module = ""                       # run as ``python -m worker_module``
    label = "exporter"                       # the plugin's name, in log lines and thread names
    live_only_keys: frozenset = frozenset()  # child counters not summed over children (gauges, names)
    stats_keys: Optional[tuple] = None       # child counters :meth:`stats` shows; None: all

    def __init__(self, restart_limit: int) -> None:
        self.restart_limit = restart_limit
        self.sent = 0            # records written to the current child
        self.lost = 0            # records a dead child had not processed
        self.unconfirmed = 0     # of those, records a child still held at the shutdown deadline
        self.restarts = 0
        self.failed_starts = 0
        self.gave_up = False
        self.closed = False
        self._log = logging.getLogger(f"sched_trace.{self.label}")
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._reported: dict[int, dict[str, Any]] = {}  # child pid -> its latest counters
        self._readers: dict[int, threading.Thread] = {}
        self._totals: dict[str, int] = {}               # counters of children that are gone
        self._proc: Optional[subprocess.Popen] = None
        self._write_lock = threading.Lock()
        self._acked = threading.Condition()
        self._ack_seq = 0
        self._seq = 0
        self._pid = os.getpid()
        self._child_died = False  # the next start is a restart (counted, limited)

    # --- what a plugin says ---------------------------------------------------------

    def _init_frames(self) -> list:
        """The frames a new child gets first."""
        raise NotImplementedError

    def _processed(self, counters: dict[str, Any]) -> int:
        """How many of the records sent a child's final counters account for."""
        return counters.get("received", 0)

    def _flush_frame(self, seq: int, remaining: float) -> Any:
        return ("flush", seq)

    def _stop_frame(self, timeout: float) -> Any:
        return ("stop",)

    def _on_counters(self, counters: dict[str, Any]) -> None:
        """A child reported (on the reader thread, under the ack lock)."""

    def _write_failed(self, count: int) -> None:
        """``count`` records did not reach the child (its pipe broke)."""

    def _forked(self) -> None:
        """In a fork child, after the inherited exporter is let go."""

    def _await_exit(self, proc: subprocess.Popen, timeout: float) -> bool:
        """Wait up to ``timeout`` for a stopping child; False if it is still finishing.

        A child past the deadline is left to finish on its own (it has its stop frame
        and end of stdin, and a bound of its own): killing it would lose what it holds.
        """
        try:
            proc.wait(max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    # --- lifecycle ------------------------------------------------------------------

    def _start(self) -> bool:
        if self.gave_up or self.closed:
            return False
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("SCHED_TRACE_BOOTSTRAP", None)  # the exporter must not trace itself under `sched-trace run`
        try:
            proc = subprocess.Popen([sys.executable, "-m", self.worker_module], bufsize=0,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
            for frame in self._init_frames():
                write_frame(proc.stdin.fileno(), frame)
        except OSError as exc:
            self.failed_starts += 1
            self._log.warning("sched-trace %s: cannot start the exporter process: %s", self.label, exc)
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
                self._log.error("sched-trace %s: exporter process died %d times; giving up",
                                self.label, self.restarts + 1)
                return False
            self.restarts += 1
            self._child_died = False
        return self._start()

    def _alive(self, proc: subprocess.Popen) -> bool:
        # poll() answers None while another thread polls or waits (Popen's waitpid lock), even
        # for a dead child; the reader thread meets end of file when the child is gone.
        reader = self._readers.get(proc.pid)
        return proc.poll() is None and (reader is None or reader.is_alive())

    def _retire(self, proc: subprocess.Popen, wait: float = 2.0) -> None:
        """Fold a finished child's counters into the totals; count what it never processed."""
        reader = self._readers.pop(proc.pid, None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(wait)
        final = self._reported.pop(proc.pid, {})
        unprocessed = max(0, self.sent - self._processed(final))
        self.lost += unprocessed
        if proc.returncode is None:  # still finishing past the deadline: not confirmed, so counted
            self.unconfirmed += unprocessed
        for key, value in final.items():
            if key not in self.live_only_keys:
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
        self.sent, self.lost, self.restarts, self.gave_up = 0, 0, 0, False
        self._reset_state()
        self._forked()

    # --- traffic --------------------------------------------------------------------

    def send(self, frame: Any, count: int) -> bool:
        """One frame of ``count`` records, from the exporter thread; False when no exporter
        process could take it."""
        with self._write_lock:
            # A child can die between the liveness check and the write: one retry on a new one.
            for attempt in (1, 2):
                if not self._ensure():
                    return False
                try:
                    write_frame(self._proc.stdin.fileno(), frame)
                except (OSError, ValueError):
                    self._died(self._proc)
                    if attempt == 2:
                        self._write_failed(count)
                        return False
                    continue
                self.sent += count
                return True
            return False

    def _read_replies(self, proc: subprocess.Popen) -> None:
        while True:
            try:
                message = read_frame(proc.stdout)
            except Exception:
                message = None
            if message is None:
                break
            with self._acked:
                counters = self._reported[proc.pid] = message[-1]
                self._on_counters(counters)
                if message[0] == "ack" and message[1] > self._ack_seq:
                    self._ack_seq = message[1]
                self._acked.notify_all()
        with self._acked:
            self._acked.notify_all()

    def flush(self, timeout: float) -> bool:
        """Ask the child to finish what it was sent; wait for its ack."""
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            proc = self._proc
            if proc is None or not self._alive(proc) or self._pid != os.getpid():
                return proc is None and not self.sent
            self._seq += 1
            seq = self._seq
            try:
                if not write_small_frame(proc.stdin.fileno(), self._flush_frame(seq, deadline - time.monotonic()),
                                         deadline):
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
        """Stop the child once it finished, within ``timeout``; no child is started after this."""
        self.closed = True
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            # The exporter thread is stuck writing to a child that reads nothing: killing
            # the child breaks its pipe, the write fails and lets go of the lock.
            self.kill_for_test()
            if not self._write_lock.acquire(timeout=max(0.1, deadline - time.monotonic())):
                return
        with _held(self._write_lock):
            proc, self._proc = self._proc, None
            if proc is None or self._pid != os.getpid():
                return
            try:  # a child too far behind to take the stop frame still stops at end of stdin
                write_small_frame(proc.stdin.fileno(), self._stop_frame(
                    max(0.05, 0.7 * (deadline - time.monotonic()))), deadline)
            except (OSError, ValueError):
                pass
            _close(proc.stdin)
            finished = self._await_exit(proc, deadline - time.monotonic())
            self._retire(proc, wait=max(0.0, deadline - time.monotonic()) if finished else 0.0)
            if not finished:
                self._log.warning("sched-trace %s: exporter process %d still exporting at the shutdown "
                                  "deadline; it finishes on its own", self.label, proc.pid)
        _live.discard(self)

    def current(self) -> dict[str, Any]:
        """The running child's latest counters."""
        proc = self._proc
        return self._reported.get(proc.pid, {}) if proc is not None else {}

    def stats(self) -> dict[str, Any]:
        current = self.current()
        keys = self.stats_keys if self.stats_keys is not None else {**self._totals, **current}
        totals: dict[str, Any] = {key: self._totals.get(key, 0) + current.get(key, 0) for key in keys}
        proc = self._proc
        totals.update(lost_in_exporter=self.lost, unconfirmed_at_shutdown=self.unconfirmed,
                      exporter_restarts=self.restarts,
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
