"""Scheduler-thread cost while the OTLP export fails, against the same run with it healthy.

The otel plugin sends OTLP/HTTP to a receiver on 127.0.0.1 that, case by case,
answers 200 (normal), refuses connections, hangs, or answers 503; one case
SIGKILLs the exporter process at the start of each sample (it is restarted).
The cases take turns inside each repeat (benchmarks.harness.interleave), and
each fault's figure is its median paired ratio to the normal case: the
scheduler thread's CPU time per step (a ``@batch`` step of 64 requests with one
``run_batch_cpu`` stage). Target: <= 1.5x. Events dropped by the full buffer
make the hot path cheaper, so they are reported beside each figure.

Run: ``python -m benchmarks.bench_faults [--quick]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import sched_trace

from .harness import CPU, interleave, median, paired_ratio, row
from .workload import Batch

GROUP = "faults"
FAULTS = ("refusing", "hanging", "503", "exporter_killed")


@sched_trace.stage("faults_run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch.reqs)")
def _run_batch(batch: Batch, mb_id: int) -> int:
    return mb_id


@sched_trace.batch("faults_decode_step", level=1, batch_size="len(batch.reqs)", requests="batch.reqs")
def _step(batch: Batch, mb_id: int) -> int:
    return _run_batch(batch, mb_id)


class _Receiver:
    """OTLP/HTTP that answers by ``mode``: "ok" (200), "503", "hang"; ``refuse()`` closes the port."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.port = 0
        self.released = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None

    def serve(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.mode == "hang":
                    receiver.released.wait(30)
                    return
                self.send_response(503 if receiver.mode == "503" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        if self._server is None:
            ThreadingHTTPServer.allow_reuse_address = True
            ThreadingHTTPServer.daemon_threads = True
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            self.port = self._server.server_address[1]
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def refuse(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set(self, mode: str) -> None:
        if mode == "refusing":
            self.refuse()
            return
        self.serve()
        self.released.set()
        self.released.clear()
        self.mode = {"hanging": "hang"}.get(mode, mode)


def _case(receiver: _Receiver, plugin: Any, mode: str, batch: Batch) -> Callable[[int], None]:
    def case(n: int) -> None:
        if mode == "exporter_killed":
            receiver.set("ok")
            process = plugin.processor.process
            if process is not None:
                process.kill()
        else:
            receiver.set("ok" if mode == "normal" else mode)
        for mb_id in range(n):
            _step(batch, mb_id)
    return case


def run(quick: bool) -> list[dict[str, Any]]:
    from sched_trace_otel import OtelPlugin

    receiver = _Receiver()
    receiver.serve()
    saved = {key: os.environ.get(key) for key in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TIMEOUT")}
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}/v1/traces"
    os.environ["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
    directory = tempfile.mkdtemp(prefix="sched-trace-bench-faults-")
    plugin = OtelPlugin(exporter="otlp", directory=directory, restart_limit=10_000)
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    rows = []
    try:
        batch = Batch(64)
        cases = {mode: _case(receiver, plugin, mode, batch) for mode in ("normal", *FAULTS)}
        samples = interleave(cases, 300 if quick else 2000, 3 if quick else 7)
        stats = dict(plugin.sched_trace_collect_stats())
        dropped = stats.get("dropped", 0)
        for mode in FAULTS:
            ratio = paired_ratio(samples, mode + CPU, "normal" + CPU)
            rows.append(row(f"scheduler-thread CPU per step, OTLP {mode} vs healthy (paired)",
                            median(samples[mode + CPU]) / 1e3, median(samples["normal" + CPU]) / 1e3, ratio, "us",
                            target="<= 1.5x", met=ratio <= 1.5, group=GROUP,
                            note=f"wall {median(samples[mode]) / 1e3:.1f} us; run total: {dropped} events "
                                 f"dropped by the full buffer, {stats.get('exporter_restarts', 0)} restarts"))
    finally:
        receiver.set("ok")
        sched_trace.shutdown(timeout=5.0)
        sched_trace.unregister(plugin)
        receiver.refuse()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(directory, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print(f"{result['figure']}: {result['value']:.2f} {result['unit']} vs {result['baseline']:.2f} "
              f"= {result['ratio']:.2f}x (target {result.get('target', '-')}; {result.get('note', '')})")
