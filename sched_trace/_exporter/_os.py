"""What the exporter process handle asks of the system: a wider pipe, whether a process is
stopped, a wait with a timeout, a lock released after a ``with``, a stream closed quietly."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import Any, Iterator

#: The exporter process's pipe, where Linux allows: bursts wait in the kernel.
PIPE_SIZE = 1 << 20


def widen(fd: int) -> None:
    """A 1 MiB pipe where Linux allows it: bursts wait in the kernel, where a scheduler's SIGKILL spares them."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (ImportError, OSError):  # another platform, or above /proc/sys/fs/pipe-max-size
        pass


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (its state in /proc: T, or t under a tracer); False where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


@contextlib.contextmanager
def held(lock: threading.Lock) -> Iterator[None]:
    """Release a lock acquired before the ``with``."""
    try:
        yield
    finally:
        lock.release()


def close(stream: Any) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass
