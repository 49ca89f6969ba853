"""Arize Phoenix, a real OTLP trace backend with its own store, for tests.

Installed into its own venv by .ci/backends/phoenix.sh (``.venv-phoenix``), started
here with ``phoenix serve`` on free ports and a temporary working directory, and
queried through its REST API (``/v1/projects/<project>/spans/otlpv1``, filtered by
attribute). Waits are hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from .prometheus_server import free_port

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / ".venv-phoenix" / "bin" / "phoenix"
SKIP_REASON = (f"no Phoenix at {BINARY}: install the real OTLP backend with "
               "`bash .ci/backends/phoenix.sh` (arize-phoenix in its own venv)")


class PhoenixServer:
    def __init__(self, workdir: Path, timeout: float = 300.0) -> None:
        if not BINARY.exists():
            pytest.skip(SKIP_REASON)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.traces_endpoint = f"{self.url}/v1/traces"
        env = {**os.environ, "PHOENIX_WORKING_DIR": str(workdir), "PHOENIX_HOST": "127.0.0.1",
               "PHOENIX_PORT": str(self.port), "PHOENIX_GRPC_PORT": str(grpc_port),
               "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false"}
        for name in ("PYTHONPATH", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name, None)  # its own venv, nothing of ours
        self.log = workdir / "phoenix.log"
        self._log_handle = open(self.log, "wb")
        self.process = subprocess.Popen([str(BINARY), "serve"], env=env, cwd=workdir, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(self._healthy, "Phoenix to answer /healthz", timeout)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def spans(self, project: str = "default", **filters: Any) -> list[dict[str, Any]]:
        """Spans matching ``filters`` (``attribute=["rid:x"]``, ``name=[...]``, ``trace_id=[...]``), every page."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 1000, **filters}
        while True:
            url = f"{self.url}/v1/projects/{project}/spans/otlpv1?{urllib.parse.urlencode(params, doseq=True)}"
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
            found += body["data"]
            if not body.get("next_cursor"):
                return found
            params["cursor"] = body["next_cursor"]

    def wait_for_spans(self, count: int, timeout: float = 120.0, project: str = "default",
                       **filters: Any) -> list[dict[str, Any]]:
        """Poll until ``count`` spans match (ingestion is asynchronous); fail past ``timeout``."""
        found: list = []

        def enough() -> bool:
            nonlocal found
            try:
                found = self.spans(project, **filters)
            except OSError:  # the project appears with the first span
                return False
            return len(found) >= count

        self.wait(enough, f"{count} spans matching {filters}", timeout, lambda: len(found))
        return found

    def wait(self, check: Callable[[], bool], what: str, timeout: float,
             detail: Callable[[], Any] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} (have {detail()}); "
                                     f"log:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log_handle.close()


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    """A span's OTLP attributes as a plain dict (array values as lists)."""
    def plain(value: dict[str, Any]) -> Any:
        if value.get("array_value"):
            return [plain(v) for v in value["array_value"]["values"]]
        return next((v for v in value.values() if v is not None), None)

    return {kv["key"]: plain(kv["value"]) for kv in span.get("attributes") or ()}
