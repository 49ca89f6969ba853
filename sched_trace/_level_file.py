"""A level file: one integer that sets the level of every process following it.

An operator raises a running server's level, or lowers it, from outside the server and
in all of its processes at once (vLLM's EngineCore child, SGLang's scheduler per rank),
without a restart: ``sched-trace level 4 --file F``. A process follows ``F`` when it is
configured with ``level_file = "F"`` or ``SCHED_TRACE_LEVEL_FILE=F`` (``sched-trace run
--level-file F`` sets it for the program and every process it starts).

The rules:
- while ``F`` exists and holds a level, that is the process's level: from ``configure``
  on, and within :data:`POLL_S` of each change; removing ``F`` gives the process back
  its configured level;
- what ``F`` holds that is not a level is refused: one warning per content, counted in
  ``sched_trace.stats()["level_file"]``, the level left as it was (an empty ``F`` is
  passed over without a word: ``echo 4 > F`` empties it before it writes);
- a process that applies a level from ``F`` appends ``PID HOST LEVEL`` to ``F.applied``
  (one write), so ``sched-trace level`` can say which processes follow and wait for them.

Nothing here runs on the scheduler thread: a daemon thread looks at ``F`` once per
:data:`POLL_S` (one ``stat``), and reads it only when it changed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Optional

from . import _stages

log = logging.getLogger("sched_trace")
ENV = "SCHED_TRACE_LEVEL_FILE"
#: Seconds between two looks at the file.
POLL_S = 1.0
#: What a follower appends to, beside the file: ``PID HOST LEVEL`` per level applied.
APPLIED_SUFFIX = ".applied"

FileKey = tuple[int, int, int, int]  # device, inode, mtime (ns), size: a new write or rename changes it


def check_path(path: str, what: str = "level_file") -> str:
    """``path`` made absolute; its directory must exist (the file itself need not)."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{what} must be a file path, got {path!r}")
    absolute = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise ValueError(f"{what} {path!r}: its directory {directory} does not exist; create it, or choose a "
                         "path in an existing directory (the file itself may be absent: the configured level holds)")
    if os.path.isdir(absolute):
        raise ValueError(f"{what} {path!r} is a directory: give a file path, e.g. {os.path.join(absolute, 'level')}")
    return absolute


def parse_level(text: str, path: str) -> int:
    """The level ``text`` (the file's content) holds, or ValueError saying what to write."""
    stripped = text.strip()
    try:
        return _stages.check_level(int(stripped))
    except ValueError:
        raise ValueError(f"level file {path} holds {stripped[:40]!r}: write an integer from 0 (off) to "
                         f"{_stages.MAX_LEVEL}, e.g. `sched-trace level 4 --file {path}`") from None


def read_text(path: str) -> Optional[str]:
    """What the file holds (its first 64 characters), or None where it is absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(64)
    except FileNotFoundError:
        return None


def _key(path: str) -> Optional[FileKey]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class Follower:
    """One process following one level file (see the module's rules)."""

    def __init__(self, path: str, configured: int, lock: Any = None) -> None:
        self.path = path
        self.lock = lock if lock is not None else threading.RLock()  # held while a level is set
        self.configured = configured  # the level configure chose: what removing the file gives back
        self.key: Optional[FileKey] = None
        self.level: Optional[int] = None  # the file's level applied last; None while the file is absent
        self.changes = 0  # levels applied from the file (the first at configure included)
        self.rejected = 0  # contents that were not a level
        self.errors = 0  # looks that failed otherwise (unreadable file, a listener that raised)
        self.error = ""  # the last refusal or failure, for stats()
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- what the file says ------------------------------------------------

    def poll(self, first: bool = False) -> None:
        """Look at the file; apply its level if it changed (``first``: whatever it holds)."""
        key = _key(self.path)
        if key == self.key and not first:
            return
        self.key = key
        if key is None:
            if self.level is not None or first:
                self.level = None
                self._apply(self.configured)
            return
        try:
            text = read_text(self.path)
            if text is None:  # removed between the stat and the open
                if first:
                    self.key = None
                    self._apply(self.configured)
                return  # else the key kept is stale: the next look finds the file gone
            if not text.strip() and not first:  # `echo 4 > F` caught between truncate and write:
                return  # the write changes the file's size, and the next look reads it
            level = parse_level(text, self.path)
        except (OSError, ValueError) as exc:
            self._refuse(str(exc), isinstance(exc, ValueError))
            if first:
                self._apply(self.configured)
            return
        self.level = level
        self.changes += 1
        self._apply(level)

    def _refuse(self, message: str, malformed: bool) -> None:
        if malformed:
            self.rejected += 1
        else:
            self.errors += 1
        self.error = message
        if message not in self._warned:
            self._warned.add(message)
            log.warning("sched-trace: %s; the level stays %d", message, _stages.get_level())

    def _apply(self, level: int) -> None:
        before = _stages.get_level()
        _stages.set_level(level)
        if level != before:
            log.info("sched-trace: level %d (was %d), from the level file %s", level, before, self.path)
        self._acknowledge(level)

    def _acknowledge(self, level: int) -> None:
        line = f"{os.getpid()} {socket.gethostname()} {level}\n".encode()
        try:
            fd = os.open(self.path + APPLIED_SUFFIX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write: lines of several processes never interleave
            finally:
                os.close(fd)
        except OSError as exc:  # a read-only directory: the level still applies
            self._refuse(f"cannot append to {self.path + APPLIED_SUFFIX} ({exc})", False)

    # --- the thread ----------------------------------------------------------

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="sched-trace-level", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # never joined: a look in progress ends on its own

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            try:
                with self.lock:
                    if stop.is_set():
                        return
                    self.poll()
            except Exception as exc:  # a bug here must not end the thread, nor reach the scheduler
                self.errors += 1
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("sched-trace: following the level file %s failed", self.path)

    def stats(self) -> dict[str, Any]:
        return {"path": self.path, "level": self.level, "configured": self.configured, "changes": self.changes,
                "rejected": self.rejected, "errors": self.errors, "error": self.error}


_follower: Optional[Follower] = None


def follow(path: Optional[str], configured: int, lock: Any = None) -> None:
    """Set the level ``configure`` chose, or the level file's while it holds one; from
    now on follow ``path`` (None: follow no file). Called by ``configure``, holding
    ``lock``, which the thread takes too: one of them sets the level at a time."""
    global _follower
    if _follower is not None and (path is None or _follower.path != path):
        _follower.stop()
        _follower = None
    if path is None:
        _stages.set_level(configured)
        return
    if _follower is None:
        _follower = Follower(path, configured, lock)
        _follower.poll(first=True)
        _follower.start()
    else:
        _follower.configured = configured
        _follower.poll(first=True)


def stop() -> None:
    """No file followed from now on (``shutdown``); the level stays as it is."""
    global _follower
    if _follower is not None:
        _follower.stop()
        _follower = None


def stats() -> Optional[dict[str, Any]]:
    follower = _follower
    return None if follower is None else follower.stats()


def _restart_after_fork() -> None:
    # The parent's thread does not exist in a fork child: the child follows the file itself.
    if _follower is not None:
        _follower.start()


os.register_at_fork(after_in_child=_restart_after_fork)
