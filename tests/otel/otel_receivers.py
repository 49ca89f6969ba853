"""Real OTLP receivers on 127.0.0.1: http/protobuf (http.server) and gRPC (grpcio TraceService)."""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _ids_to_base64(document: dict) -> dict:
    """OTLP/JSON carries ids in hex; protobuf's JSON mapping wants base64."""
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return document


class SpanStore:
    """Every span received, with its resource, in arrival order."""

    def __init__(self) -> None:
        self.spans: list[tuple[Any, Any]] = []
        self.requests = 0
        self.headers: list[dict[str, str]] = []  # per request, names lower-cased (gRPC: metadata)
        self.lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, headers: Any = ()) -> None:
        with self.lock:
            self.requests += 1
            self.headers.append({str(k).lower(): str(v) for k, v in dict(headers).items()})
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((resource_spans.resource, span))


class HttpReceiver:
    """OTLP/HTTP on a fixed port; ``stop()`` then ``start()`` again simulates an outage."""

    def __init__(self, port: int = 0, tls: "tuple[str, str] | None" = None) -> None:
        self.store = SpanStore()
        self.port = port
        self.tls = tls            # (certificate file, key file): serve HTTPS
        self.status = 200         # what to answer; 401 etc. refuse (spans not stored)
        self.rejected = 0         # > 0: answer a partial success that rejects this many spans
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> "HttpReceiver":
        store, receiver = self.store, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if receiver.status != 200:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    json_format.ParseDict(_ids_to_base64(json.loads(body)), request)
                else:
                    request.ParseFromString(body)
                store.add(request, self.headers.items())
                reply = trace_service_pb2.ExportTraceServiceResponse()
                if receiver.rejected:
                    reply.partial_success.rejected_spans = receiver.rejected
                    reply.partial_success.error_message = "over quota"
                reply = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP TraceService over gRPC, insecure, on 127.0.0.1."""

    def __init__(self) -> None:
        import grpc

        self.store = SpanStore()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
        self.store.add(request, context.invocation_metadata())
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> "GrpcReceiver":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
