"""Frames on the pipes between a scheduler process and its exporter process.

A frame is a 4-byte little-endian length, a kind byte and the payload. Kind
``E``: an events payload (:mod:`.codec`), passed through as bytes. Kind ``C``: a
small pickled control tuple: ``("init", ...)``, ``("flush", seq, timeout)``,
``("stop", timeout)`` from the parent; ``("stats", counters)`` and
``("ack", seq, counters)`` from the child.

Writes go straight to the descriptor (no user-space buffer): a fork in the middle
of a write leaves nothing half-buffered for the forked child to send again.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
from typing import Any, Optional, Union

from .. import _native

EVENTS, CONTROL = b"E", b"C"
_HEADER = struct.Struct("<Ic")


def _frame(kind: bytes, payload: bytes) -> memoryview:
    return memoryview(_HEADER.pack(len(payload), kind) + payload)


def write_events(fd: int, payload: bytes, held: bool = False) -> None:
    """Write an events frame whole; blocks while the pipe is full (the one back-pressure point).

    ``held``: ``fd`` is a non-blocking pipe (an exporter process's); where it has room, the
    C form writes the frame without letting go of the GIL (``_speedups.write_held``).
    Letting go would hand the GIL to the scheduler thread only to take it back from it: a
    forced switch for that thread per frame (docs/performance.md, "What an exporter frame
    costs the engine"). Never for a blocking descriptor: a file write could wait on the
    disk with the GIL held.
    """
    written = 0
    if held and _native.speedups is not None:
        written = _native.speedups.write_held(fd, _HEADER.pack(len(payload), EVENTS), payload)
        if written == _HEADER.size + len(payload):
            return
    _write_all(fd, _frame(EVENTS, payload)[written:])


def write_control(fd: int, message: tuple) -> None:
    _write_all(fd, _frame(CONTROL, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)))


def write_control_by(fd: int, message: tuple, deadline: float) -> bool:
    """Write a control frame unless the pipe stays full until ``deadline`` (monotonic).

    A pipe that poll() calls writable takes PIPE_BUF bytes at once, so a frame that
    small never blocks: a child that stopped reading cannot hold a shutdown past its deadline.
    """
    view = _frame(CONTROL, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    if len(view) > select.PIPE_BUF:
        _write_all(fd, view)
        return True
    try:
        if not _ready(fd, select.POLLOUT, max(0.0, deadline - time.monotonic())):
            return False
    except (OSError, ValueError):
        return False
    _write_all(fd, view)
    return True


def _ready(fd: int, events: int, timeout: Optional[float]) -> bool:
    """Wait until ``fd`` is ready for ``events`` (for a write: or its reader is gone, which
    the write then says), at most ``timeout`` seconds, the GIL let go meanwhile. poll(), not
    select(): a scheduler's process (vLLM's, with its sockets and libraries) can hold
    descriptors past select()'s 1024."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(None if timeout is None else timeout * 1000.0))


def reply(fd: int, message: tuple) -> None:
    """The child answers its parent; if the parent is gone, the child keeps going with what it holds."""
    try:
        write_control(fd, message)
    except OSError:
        pass


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a non-blocking descriptor, full: wait for room
            _ready(fd, select.POLLOUT, None)


class FrameReader:
    """Reads whole frames from a descriptor, unbuffered by Python, so poll() tells the truth.

    ``nap``: between frames, sleep this long and look again instead of waiting in poll()
    (the exporter process: ``child.NAP``). A reader that waits in the kernel has to be woken
    by the writer's write, and the writer pays for the wake-up: on this project's VM, 10-15
    us more for a 33 KB frame on a quiet host and a few hundred on a busy one, and the
    engine paid more for each microsecond of the frame (docs/performance.md, "The
    exporter process naps"). The writer is the exporter thread, holding the GIL the engine
    waits for. What it costs: a frame, a flush's ack, the end of the stream are seen up to
    one nap later.
    """

    CHUNK = 1 << 20

    def __init__(self, fd: int, nap: Optional[float] = None) -> None:
        self.fd = fd
        self.nap = nap
        self._buffer = bytearray()
        self.closed = False

    def read(self, timeout: Optional[float] = None) -> Union[None, tuple[bytes, Any]]:
        """``(kind, payload or message)``; None when ``timeout`` passed first or at end of stream
        (then :attr:`closed` is true). A torn frame at the end of the stream counts as the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            if self.closed:
                return None
            if self.nap is not None:
                if not self._napped(deadline):
                    return None
            elif deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _ready(self.fd, select.POLLIN, remaining):
                    return None
            chunk = os.read(self.fd, self.CHUNK)
            if not chunk:
                self.closed = True
                return None
            self._buffer += chunk

    def _napped(self, deadline: Optional[float]) -> bool:
        """Input there to read (a look, never a wait in the kernel), napping until it is;
        False when ``deadline`` passed first."""
        while not _ready(self.fd, select.POLLIN, 0):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.nap if deadline is None else max(0.0, min(self.nap, deadline - time.monotonic())))
        return True

    @property
    def pending(self) -> int:
        """Bytes read but not yet a whole frame (at the end of a stream: a frame cut short)."""
        return len(self._buffer)

    def _take(self) -> Optional[tuple[bytes, Any]]:
        buffer = self._buffer
        if len(buffer) < _HEADER.size:
            return None
        size, kind = _HEADER.unpack_from(buffer)
        end = _HEADER.size + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            payload = bytes(view[_HEADER.size:end])
        del buffer[:end]
        return kind, (payload if kind == EVENTS else pickle.loads(payload))
