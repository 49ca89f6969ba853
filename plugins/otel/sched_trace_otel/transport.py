"""Send already-encoded OTLP trace requests: http/protobuf, http/json (requests) or gRPC (grpcio).

The spans are encoded once by :mod:`.protowire` (or :func:`.encode.traces_json_line`);
this module only moves the bytes, through public APIs: a ``requests.Session`` POST,
and a gRPC unary call of ``TraceService/Export`` whose request serializer is the
identity. Endpoint, headers, TLS, timeout and compression come from
:class:`~.otel_env.OtlpTarget`, that is, from the standard ``OTEL_EXPORTER_OTLP_*``
variables. Retrying is the sink's job; this only says whether a retry makes sense.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any, NamedTuple, Optional

from .otel_env import OtlpTarget

GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# OTLP/HTTP: retry on these; any other non-2xx status drops the request.
RETRYABLE_HTTP = frozenset((429, 502, 503, 504))
# OTLP/gRPC: the status codes the specification calls retryable.
RETRYABLE_GRPC = frozenset(("CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                            "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"))


class SendResult(NamedTuple):
    ok: bool
    retryable: bool = False
    rejected: int = 0      # spans the receiver refused in a partial success
    reason: str = ""       # for the log: status code or exception, never a header


def _rejected(body: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    try:
        return ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
    except Exception:  # a receiver that answers with something else: it took the spans
        return 0


class HttpTransport:
    """POSTs to the OTLP/HTTP traces endpoint over one pooled session."""

    def __init__(self, target: OtlpTarget) -> None:
        import requests

        self.target = target
        self._session = requests.Session()
        # Per request, not on the session: REQUESTS_CA_BUNDLE would override a session's verify.
        self._verify: Any = target.certificate or True
        self._cert: Any = None
        if target.client_certificate:
            self._cert = ((target.client_certificate, target.client_key) if target.client_key
                          else target.client_certificate)
        json = target.protocol == "http/json"
        self._headers = {"Content-Type": "application/json" if json else "application/x-protobuf",
                         "User-Agent": "sched-trace-otel"}
        self._headers.update(dict(target.headers))
        if target.compression != "none":
            self._headers["Content-Encoding"] = target.compression

    def send(self, payload: bytes, timeout: Optional[float] = None) -> SendResult:
        import requests

        if self.target.compression == "gzip":
            payload = gzip.compress(payload, compresslevel=6)
        elif self.target.compression == "deflate":
            payload = zlib.compress(payload)
        try:
            response = self._session.post(self.target.endpoint, data=payload, headers=self._headers,
                                          timeout=timeout or self.target.timeout, verify=self._verify,
                                          cert=self._cert)
        except requests.RequestException as exc:  # refused, reset, timed out, TLS
            return SendResult(False, True, reason=type(exc).__name__)
        status = response.status_code
        if 200 <= status < 300:
            json = self.target.protocol == "http/json"
            return SendResult(True, rejected=0 if json else _rejected(response.content))
        return SendResult(False, status in RETRYABLE_HTTP, reason=f"HTTP {status}")

    def close(self) -> None:
        self._session.close()


class GrpcTransport:
    """One channel to the OTLP/gRPC TraceService; the request goes out as the bytes we encoded."""

    def __init__(self, target: OtlpTarget) -> None:
        import grpc

        self.target = target
        address = target.endpoint.split("://", 1)[-1].rstrip("/")
        if target.insecure:
            self._channel = grpc.insecure_channel(address)
        else:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(
                root_certificates=_read(target.certificate), private_key=_read(target.client_key),
                certificate_chain=_read(target.client_certificate)))
        self._export = self._channel.unary_unary(GRPC_METHOD, request_serializer=None,
                                                 response_deserializer=None)
        self._metadata = tuple(target.headers)
        self._compression = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}.get(
            target.compression, grpc.Compression.NoCompression)

    def send(self, payload: bytes, timeout: Optional[float] = None) -> SendResult:
        import grpc

        try:
            body = self._export(payload, timeout=timeout or self.target.timeout, metadata=self._metadata,
                                compression=self._compression)
        except grpc.RpcError as exc:
            code: Any = exc.code() if callable(getattr(exc, "code", None)) else None
            name = getattr(code, "name", "UNKNOWN")
            return SendResult(False, name in RETRYABLE_GRPC, reason=f"gRPC {name}")
        return SendResult(True, rejected=_rejected(body or b""))

    def close(self) -> None:
        self._channel.close()


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def make_transport(target: OtlpTarget) -> Any:
    return GrpcTransport(target) if target.protocol == "grpc" else HttpTransport(target)
