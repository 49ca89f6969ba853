"""``sched-trace level [N | --clear] [--file F] [--wait SECONDS]``: a running program's level, from outside.

Every process that follows the level file ``F`` (``sched-trace run --level-file F``,
``SCHED_TRACE_LEVEL_FILE=F``, or ``level_file = "F"`` in its config) takes the level
written there within a second, and gives its configured level back when ``F`` is
removed (``--clear``); see ``sched_trace._level_file``. Without ``N`` or ``--clear``,
prints the file's level and the processes that follow it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Optional

from .. import _level_file, _stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("level", nargs="?", type=int, help=f"the level to set, 0 (off) .. {_stages.MAX_LEVEL}")
    parser.add_argument("--file", default=None,
                        help=f"the level file the processes follow (default: ${_level_file.ENV})")
    parser.add_argument("--clear", action="store_true",
                        help="remove the file: each process goes back to its configured level")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait until every live process on this host that followed the file has applied "
                             "the change (exit 1 if one has not by then)")


Follower = tuple[str, int]  # host, pid


def followers(path: str, since: int = 0) -> dict[Follower, int]:
    """The last level each process applied from ``path``, in lines of ``path.applied`` past
    byte ``since``."""
    last: dict[Follower, int] = {}
    try:
        with open(path + _level_file.APPLIED_SUFFIX, "rb") as file:
            file.seek(since)
            lines = file.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return last
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            last[(parts[1], int(parts[0]))] = int(parts[2])
    return last


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (someone else's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(follower: Follower) -> Optional[bool]:
    """Whether the process runs (None: on another host, not known from here)."""
    host, pid = follower
    return pid_running(pid) if host == socket.gethostname() else None


def applied_size(path: str) -> int:
    try:
        return os.path.getsize(path + _level_file.APPLIED_SUFFIX)
    except OSError:
        return 0


def write_level(path: str, level: Optional[int]) -> bool:
    """``level`` into ``path`` in one rename (a follower never reads half a file); None removes
    it. False when there was nothing to remove."""
    if level is None:
        try:
            os.remove(path)
        except FileNotFoundError:
            return False
        return True
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(f"{level}\n")
    os.replace(temporary, path)
    return True


def _describe(path: str) -> str:
    text = _level_file.read_text(path)
    if text is None:
        return f"{path}: absent (each process at its configured level)"
    try:
        return f"{path}: level {_level_file.parse_level(text, path)}"
    except ValueError as exc:
        return f"{exc} (each process keeps the level it had)"


def _wait(path: str, known: list[Follower], since: int, timeout: float) -> list[Follower]:
    """The live followers in ``known`` that have not applied a level since byte ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        done = followers(path, since)
        waiting = [f for f in known if f not in done and alive(f)]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    path = args.file or os.environ.get(_level_file.ENV)
    if not path:
        raise SystemExit(f"sched-trace level: no level file: pass --file F (the file given to sched-trace run "
                         f"--level-file) or set {_level_file.ENV}")
    try:
        path = _level_file.check_path(path, "--file")
        if args.level is not None:
            if args.clear:
                raise ValueError("give a level or --clear, not both")
            _stages.check_level(args.level)
    except ValueError as exc:
        raise SystemExit(f"sched-trace level: {exc}") from None
    change = args.level is not None or args.clear
    before = followers(path)
    if not change:
        print(_describe(path))
        for (host, pid), level in sorted(before.items()):
            state = {True: "running", False: "ended", None: "on another host"}[alive((host, pid))]
            print(f"  pid {pid} on {host}: level {level} applied last ({state})")
        return 0
    since = applied_size(path)
    if not write_level(path, None if args.clear else args.level):
        print(f"{path}: absent already (each process at its configured level)")
        return 0
    print(f"{path}: " + ("removed: each process goes back to its configured level" if args.clear
                         else f"level {args.level}"))
    known = [f for f in before if alive(f)]
    if args.wait <= 0:
        if known:
            print(f"  {len(known)} running process(es) on this host follow it (each within "
                  f"{_level_file.POLL_S:g} s); --wait SECONDS waits for them")
        return 0
    if not known:
        print("  no running process on this host has followed it yet: nothing to wait for")
        return 0
    waiting = _wait(path, known, since, args.wait)
    applied = followers(path, since)
    for follower in known:
        host, pid = follower
        if follower in applied:
            print(f"  pid {pid} on {host}: level {applied[follower]}")
    for host, pid in waiting:
        print(f"  pid {pid} on {host}: not applied after {args.wait:g} s", file=sys.stderr)
    return 1 if waiting else 0
