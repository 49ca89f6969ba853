"""Real OTLP collectors for the fleet tests: rotel-agent processes, as docs/deployment.md runs them.

The binary comes from PyPI's ``rotel`` wheel, installed into ``.venv-rotel`` by
``.ci/backends/rotel.sh``. The commands themselves are read from docs/deployment.md, so
the guide's commands are the ones tested.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest

from .netns import Host

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-rotel"
GUIDE = ROOT / "docs" / "deployment.md"
SKIP_REASON = (f"no rotel-agent in {VENV}: install the real OTLP collector with "
               "`bash .ci/backends/rotel.sh` (PyPI's rotel wheel in its own venv)")
START_MARK = "--- sched-trace test: start"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def binary() -> Path:
    """rotel-agent, as installed by .ci/backends/rotel.sh (whose marker says the install finished)."""
    marker, path = VENV / ".sched-trace-rotel", VENV / ".rotel-agent-path"
    if not marker.exists() or not path.exists():
        pytest.skip(SKIP_REASON)
    agent = Path(path.read_text().strip())
    if not os.access(agent, os.X_OK):
        pytest.skip(SKIP_REASON)
    return agent


def guide_block(heading_comment: str) -> list[str]:
    """The lines of the deployment guide's bash block that starts with ``# <heading_comment>``,
    backslash continuations joined, comments and blank lines dropped."""
    for match in BASH_BLOCK.finditer(GUIDE.read_text()):
        text = match.group(1)
        if text.startswith(f"# {heading_comment}"):
            joined = text.replace("\\\n", " ")
            return [line.split("  #")[0].strip() for line in joined.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    raise AssertionError(f"docs/deployment.md has no bash block starting with '# {heading_comment}'")


def guide_command(heading_comment: str) -> list[str]:
    """The guide's ``rotel-agent ...`` command in that block, as argv with the installed binary."""
    (line,) = [line for line in guide_block(heading_comment) if line.startswith("rotel-agent ")]
    return [str(binary()), *shlex.split(line)[1:]]


def guide_environment(heading_comment: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of that block."""
    env = {}
    for line in guide_block(heading_comment):
        if line.startswith("export "):
            name, _, value = shlex.split(line[len("export "):])[0].partition("=")
            env[name] = value
    return env


def option(argv: Sequence[str], name: str) -> str:
    return argv[list(argv).index(name) + 1]


def replace_option(argv: Sequence[str], name: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(name) + 1] = value
    return argv


class Collector:
    """One rotel-agent, on a simulated host (``host``) or on this one; stopped and started again at will.

    Its output (the gateway's debug log of every span it received included) goes to ``log``,
    appended across restarts. Waits are hang guards: each ends as soon as its condition holds.
    """

    def __init__(self, name: str, argv: Sequence[str], log: Path, host: Optional[Host] = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.host = host
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0

    def listens_on(self) -> list[tuple[str, int]]:
        found = []
        for flag in ("--otlp-grpc-endpoint", "--otlp-http-endpoint"):
            address, _, port = option(self.argv, flag).rpartition(":")
            found.append(("127.0.0.1" if address == "localhost" else address, int(port)))
        return found

    def start(self, timeout: float = 120.0) -> "Collector":
        assert self.process is None, f"{self.name} is running"
        with open(self.log, "ab") as log:
            log.write(f"{START_MARK} {self.name} #{self.starts + 1}\n".encode())
            log.flush()
            command = self.host.argv(self.argv) if self.host else self.argv
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        wait_until(self._listening, f"{self.name} to listen on {self.listens_on()}", timeout, self._check_alive)
        return self

    def _listening(self) -> bool:
        probe = "; ".join(f"socket.create_connection(('{a}', {p}), 2).close()" for a, p in self.listens_on())
        if self.host is None:
            try:
                for address, port in self.listens_on():
                    socket.create_connection((address, port), 2).close()
                return True
            except OSError:
                return False
        done = subprocess.run(["ip", "netns", "exec", self.host.netns, "python3", "-c", f"import socket; {probe}"],
                              capture_output=True, timeout=60)
        return done.returncode == 0

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Signal it and wait for it to exit (SIGTERM: rotel exports what it holds first)."""
        assert self.process is not None, f"{self.name} is not running"
        process, self.process = self.process, None
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
            raise AssertionError(f"{self.name} did not exit within {timeout} s of signal {sig}:\n"
                                 f"{self.tail()}") from None

    def close(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            if process.poll() is None:
                process.kill()
            process.wait(30)

    def said(self, text: str) -> int:
        """How often its output since its last start holds ``text``."""
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return log.rpartition(START_MARK)[2].count(text)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# `rotel-agent --debug-log traces --debug-log-verbosity detailed` prints every span it
# receives: the resource attributes of each ResourceSpans, then per span an "ID : <hex>" line.
_PROJECT = re.compile(r"^\s+-> openinference\.project\.name: Str\((.*)\)\s*$")
_SPAN_ID = re.compile(r"^\s+ID\s+:\s+([0-9a-f]{16})\s*$")


def received_span_ids(log: Path, start: int = 1) -> "collections.Counter[tuple[str, str]]":
    """(project, span id) -> how many times the collector received it, from its debug log;
    from its ``start``-th start on (each start appends to the log)."""
    seen: "collections.Counter[tuple[str, str]]" = collections.Counter()
    project, starts = "", 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(START_MARK):
            starts += 1
        elif starts < start:
            continue
        elif line.startswith("ResourceSpans #"):
            project = ""
        elif (match := _PROJECT.match(line)) is not None:
            project = match.group(1)
        elif (match := _SPAN_ID.match(line)) is not None:
            seen[(project, match.group(1))] += 1
    return seen


def wait_until(check: Callable[[], bool], what: str, timeout: float, guard: Callable[[], None] = lambda: None,
               detail: Callable[[], str] = lambda: "", every: float = 0.2) -> None:
    """Poll ``check``; ``guard`` raises when waiting is pointless (a process died); fail past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        guard()
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s {detail()}")
        time.sleep(every)
