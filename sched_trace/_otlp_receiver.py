"""A real OTLP trace receiver on 127.0.0.1 that can be told to fail: the one the tests use.

OTLP/HTTP (``/v1/traces``: protobuf, JSON, gzip or deflate, optionally over TLS) or
OTLP/gRPC (the ``TraceService`` of opentelemetry-proto, served by grpcio). Every span
it stores is an ``opentelemetry.proto`` message, with its resource. ``mode`` says what
it does with the next request:

``"ok"``       store the spans and answer success (with ``rejected`` > 0: a partial
               success that rejects that many, as a quota would);
``"503"``      answer HTTP 503 / gRPC UNAVAILABLE, store nothing (retryable);
``"reject"``   answer HTTP 400 / gRPC INVALID_ARGUMENT, store nothing (not retryable);
``"hang"``     never answer, until :meth:`release` or another mode;
``"refuse"``   stop listening: connections are refused, on the same port, until the
               mode changes again.

HTTP also answers any ``status`` other than 200 as given (401, 429 ...). Needs
``opentelemetry-proto`` and, for gRPC, ``grpcio`` (``pip install sched-trace[testing]``),
imported when the receiver starts.
"""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

MODES = ("ok", "503", "reject", "hang", "refuse")
_GRPC_CODES = {"503": "UNAVAILABLE", "reject": "INVALID_ARGUMENT"}


def _hex_ids_to_base64(document: dict) -> dict:
    """OTLP/JSON carries ids in hex; protobuf's JSON mapping wants base64."""
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                items = [span, *span.get("links", [])]
                for item in items:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if item.get(key):
                            item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()
    return document


class OtlpReceiver:
    """OTLP traces on 127.0.0.1; ``protocol`` is ``"http"`` (protobuf and JSON) or ``"grpc"``.

    ``start()`` binds (``port`` 0: any free one) and returns the receiver; ``stop()``
    lets go; ``start()`` again listens on the same port (an outage and a recovery).
    Also a context manager.
    """

    def __init__(self, protocol: str = "http", port: int = 0, tls: Optional[tuple[str, str]] = None) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol {protocol!r}: use 'http' or 'grpc'")
        self.protocol = protocol
        self.port = port
        self.tls = tls                     # (certificate file, key file): HTTPS
        self.status = 200                  # HTTP: any other status is answered as is, nothing stored
        self.rejected = 0                  # > 0: a partial success rejecting this many spans
        self.spans: list[tuple[Any, Any]] = []      # (resource, span), in arrival order
        self.headers: list[dict[str, str]] = []     # per stored request, names lower-cased
        self.requests = 0                  # requests stored
        self.refused_requests = 0          # requests answered with a failure
        self.lock = threading.Lock()
        self._mode = "ok"
        self._released = threading.Event()
        self._server: Any = None

    # --- what it does -------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` should say."""
        if self.protocol == "grpc":
            return f"http://127.0.0.1:{self.port}"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1/traces"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
        previous, self._mode = self._mode, mode
        if mode == "hang":
            self._released.clear()
        else:
            self._released.set()
        if mode == "refuse" and previous != "refuse":
            self.stop()
        elif previous == "refuse" and mode != "refuse":
            self.start()

    def release(self) -> None:
        """Let every hanging request go (unanswered: the client sees a dropped connection)."""
        self._released.set()

    def _store(self, request: Any, headers: Any) -> None:
        with self.lock:
            self.requests += 1
            self.headers.append({str(k).lower(): str(v) for k, v in dict(headers).items()})
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((resource_spans.resource, span))

    def _failure(self) -> Optional[str]:
        """None to store the request, else the mode that answers it (after a hang's release)."""
        mode = self._mode
        if mode == "hang":
            self._released.wait(120)
            return "hang"
        if mode in ("503", "reject"):
            with self.lock:
                self.refused_requests += 1
            return mode
        return None

    def _response(self) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        reply = trace_service_pb2.ExportTraceServiceResponse()
        if self.rejected:
            reply.partial_success.rejected_spans = self.rejected
            reply.partial_success.error_message = "over quota"
        return reply

    # --- reading what arrived ------------------------------------------------------

    def names(self) -> list[str]:
        with self.lock:
            return [span.name for _, span in self.spans]

    def spans_named(self, name: str) -> list[Any]:
        with self.lock:
            return [span for _, span in self.spans if span.name == name]

    def attribute_values(self, span_name: str, key: str) -> list[Any]:
        """The value of attribute ``key`` on every span named ``span_name`` that has it, in arrival order."""
        found = []
        for span in self.spans_named(span_name):
            attributes = span_attributes(span)
            if key in attributes:
                found.append(attributes[key])
        return found

    def wait_for(self, condition: Callable[["OtlpReceiver"], bool], timeout: float = 30.0) -> bool:
        """Poll ``condition(self)`` until it holds or ``timeout`` passes; whether it held."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # --- serving ----------------------------------------------------------------------

    def start(self) -> "OtlpReceiver":
        if self._server is not None:
            return self
        self._server = self._serve_grpc() if self.protocol == "grpc" else self._serve_http()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self._released.set()
        if server is None:
            return
        if self.protocol == "grpc":
            server.stop(grace=None)
        else:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve_http(self) -> Any:
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                failure = receiver._failure()
                if failure == "hang":
                    return  # the connection closes unanswered
                status = {"503": 503, "reject": 400}.get(failure or "", receiver.status)
                if status != 200:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), request)
                else:
                    request.ParseFromString(body)
                receiver._store(request, self.headers.items())
                reply = receiver._response().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        server = _HttpServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True, name="otlp-receiver").start()
        return server

    def _serve_grpc(self) -> Any:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
                failure = receiver._failure()
                if failure == "hang":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "released")
                if failure is not None:
                    context.abort(getattr(grpc.StatusCode, _GRPC_CODES[failure]), failure)
                receiver._store(request, context.invocation_metadata())
                return receiver._response()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        return server


class _HttpServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def span_attributes(span: Any) -> dict[str, Any]:
    """An ``opentelemetry.proto`` span's (or resource's) attributes as a plain dict."""
    found: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            found[attribute.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            found[attribute.key] = getattr(value, kind) if kind else None
    return found
