"""Frames on the pipe to an exporter process arrive whole and in order when the pipe fills.

The scheduler side writes each events frame whole, waiting while the pipe is full (the
one back-pressure point); the reader is the exporter process's own ``FrameReader``, on a
thread that drains more slowly than the writer writes.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Optional

import pytest

from sched_trace import _native
from sched_trace._exporter.frames import CONTROL, EVENTS, FrameReader, write_control, write_control_by, write_events


def slow_reader(fd: int, count: int, frames: list, nap: Optional[float] = None) -> threading.Thread:
    def read() -> None:
        reader = FrameReader(fd, nap=nap)
        while len(frames) < count:
            time.sleep(0.01)  # behind the writer: the pipe fills
            frame = reader.read(timeout=10.0)
            if frame is None:
                return
            frames.append(frame)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.fixture(params=["blocking", "held-c", "held-python"])
def pipe_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A blocking pipe (capture files' writer), or an exporter process's non-blocking one
    written while holding the GIL where it has room (the C form) or through os.write."""
    if request.param == "held-c" and _native.speedups is None:
        pytest.skip("the C extension is not built here")
    if request.param == "held-python":
        monkeypatch.setattr(_native, "speedups", None)
    return request.param


@pytest.mark.parametrize("nap", [None, 0.005], ids=["reader-waits", "reader-naps"])
def test_frames_larger_than_the_pipe_arrive_whole_and_in_order(pipe_form: str, nap: Optional[float]):
    # nap: the exporter process's reader, which looks at the pipe between naps instead of
    # waiting in the kernel for a writer to wake it
    read_end, write_end = os.pipe()
    held = pipe_form != "blocking"
    os.set_blocking(write_end, not held)
    payloads = [bytes([index]) * size for index, size in enumerate([10, 70_000, 1, 300_000, 65_536, 5])]
    frames: list = []
    thread = slow_reader(read_end, len(payloads) + 1, frames, nap)
    try:
        for payload in payloads:
            write_events(write_end, payload, held=held)
        write_control(write_end, ("stop", 1.0))  # a control frame after them, through the same pipe
        thread.join(30)
        assert frames == [(EVENTS, payload) for payload in payloads] + [(CONTROL, ("stop", 1.0))]
    finally:
        os.close(write_end)
        os.close(read_end)


def test_a_napping_reader_says_when_nothing_came_and_sees_the_end():
    read_end, write_end = os.pipe()
    try:
        reader = FrameReader(read_end, nap=0.005)
        assert reader.read(timeout=0.05) is None and not reader.closed
        write_events(write_end, b"late")
        assert reader.read(timeout=5.0) == (EVENTS, b"late")
        os.close(write_end)
        write_end = -1
        assert reader.read() is None and reader.closed
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)


def test_a_frame_cut_short_at_the_end_of_the_stream_is_the_end():
    read_end, write_end = os.pipe()
    try:
        write_events(write_end, b"whole")
        os.write(write_end, b"\x10\x00\x00\x00E" + b"cut")  # a header promising 16 bytes, then 3
        os.close(write_end)
        write_end = -1
        reader = FrameReader(read_end)
        assert reader.read(timeout=5.0) == (EVENTS, b"whole")
        assert reader.read(timeout=5.0) is None and reader.closed and reader.pending == 8
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)


def test_write_held_takes_what_a_non_blocking_pipe_has_room_for_and_says_when_it_has_none():
    if _native.speedups is None:
        pytest.skip("the C extension is not built here")
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        assert _native.speedups.write_held(write_end, b"head", b"body") == 8
        assert os.read(read_end, 100) == b"headbody"
        room = 0
        while True:  # fill the pipe: what it took, then 0 (it would block), never an error
            written = _native.speedups.write_held(write_end, b"", b"x" * 65_536)
            if written == 0:
                break
            room += written
        assert room > 0 and _native.speedups.write_held(write_end, b"h", b"b") == 0
        os.close(read_end)
        read_end = -1
        with pytest.raises(BrokenPipeError):  # the reader gone: the error, as os.write raises it
            _native.speedups.write_held(write_end, b"h", b"b")
    finally:
        os.close(write_end)
        if read_end >= 0:
            os.close(read_end)


def test_pipes_numbered_past_1024_are_waited_on_and_written(pipe_form: str):
    """A scheduler's process can hold more than 1024 descriptors (vLLM's sockets and
    libraries): select() refuses those, and a full pipe or a flush's control frame must
    still be waited on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} leaves no descriptor past 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if soft != resource.RLIM_INFINITY else soft, hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]
    read_end, write_end = os.pipe()
    held = pipe_form != "blocking"
    try:
        assert write_end > 1024 and read_end > 1024
        os.set_blocking(write_end, not held)
        payloads = [bytes([index]) * size for index, size in enumerate([300_000, 5, 2_000_000])]
        frames: list = []
        thread = slow_reader(read_end, len(payloads) + 1, frames)
        for payload in payloads:  # larger than the pipe: the writer waits for room
            write_events(write_end, payload, held=held)
        assert write_control_by(write_end, ("stop", 1.0), time.monotonic() + 30)
        thread.join(30)
        assert frames == [(EVENTS, payload) for payload in payloads] + [(CONTROL, ("stop", 1.0))]
    finally:
        for fd in fillers + [read_end, write_end]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
