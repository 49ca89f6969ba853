"""An OTLP/HTTP receiver on 127.0.0.1 that can be told to fail: answer 503, hang, or refuse.

Built on tests/otel/otel_receivers.py's SpanStore (every span received, in order).
``mode`` is read per request: ``"ok"`` stores and answers 200, ``"503"`` answers
Service Unavailable without storing, ``"hang"`` never answers (until ``release``).
Refusing connections is ``stop()``; ``start()`` again on the same port brings it back.
"""

from __future__ import annotations

import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "otel_receivers", Path(__file__).resolve().parents[1] / "otel" / "otel_receivers.py")
otel_receivers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(otel_receivers)  # type: ignore[union-attr]
HttpReceiver = otel_receivers.HttpReceiver
SpanStore = otel_receivers.SpanStore


class FaultyReceiver:
    def __init__(self) -> None:
        self.store = SpanStore()
        self.mode = "ok"
        self.port = 0
        self.refused_requests = 0
        self.released = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> "FaultyReceiver":
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = receiver.mode
                if mode == "hang":
                    receiver.released.wait(60)
                    return
                if mode == "503":
                    receiver.refused_requests += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.store.add(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        ThreadingHTTPServer.daemon_threads = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def names(self) -> list[str]:
        with self.store.lock:
            return [span.name for _, span in self.store.spans]

    def microbatches(self, name: str = "run_batch_cpu") -> list[int]:
        with self.store.lock:
            spans = [span for _, span in self.store.spans if span.name == name]
        found = []
        for span in spans:
            for attribute in span.attributes:
                if attribute.key == "pp_mb_id":
                    found.append(attribute.value.int_value)
        return found
