"""A real Prometheus server (Debian's package, installed by .ci/backends/prometheus.sh) for tests.

Started on 127.0.0.1 with a temporary config and data directory; queried through
its HTTP API. Waits are hang guards only: a poll loop that gives up after
``timeout`` seconds, never an assertion on how long something took.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

BINARY = shutil.which("prometheus")
SKIP_REASON = ("no 'prometheus' binary on PATH: install the real server with "
               "`bash .ci/backends/prometheus.sh` (Debian's prometheus package, as root)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    def __init__(self, workdir: Path, targets: dict[str, list[str]]) -> None:
        if BINARY is None:
            pytest.skip(SKIP_REASON)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: [{', '.join(repr(t) for t in hosts)}]\n"
            for job, hosts in targets.items())
        config = workdir / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
        self.log = workdir / "prometheus.log"
        self._log_handle = open(self.log, "wb")
        self.process = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self._log_handle, stderr=subprocess.STDOUT)
        self.wait(lambda: self._ready(), "the server to answer /-/ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: ``[{"metric": {labels}, "value": float}, ...]``."""
        return [{"metric": r["metric"], "value": float(r["value"][1])}
                for r in self.api("query", query=expr)["result"]]

    def wait_for(self, expr: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 90.0) -> list:
        """Poll ``expr`` until ``done(result)``; the result. Fails (with the log) past ``timeout``."""
        result: list = []

        def check() -> bool:
            nonlocal result
            result = self.query(expr)
            return done(result)

        self.wait(check, f"{expr!r} to satisfy the test (last result: {{result}})", timeout,
                  lambda: result)
        return result

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 90.0,
             detail: Optional[Callable[[], Any]] = None) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None or time.monotonic() > deadline:
                message = what.format(result=detail() if detail else None)
                raise AssertionError(f"gave up waiting for {message}; server log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log_handle.close()
