"""sched_trace.testing.OtlpReceiver: each fault mode, over HTTP and gRPC, as a real OTLP client sees it.

The client is the otel plugin's transport (requests / grpcio), sending one real
``ExportTraceServiceRequest``; what it reports is what the plugin's retry logic acts on.
"""

from __future__ import annotations

from typing import Any

import pytest

from sched_trace.testing import OtlpReceiver, span_attributes

pytest.importorskip("sched_trace_otel")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from sched_trace_otel.otel_env import OtlpTarget  # noqa: E402
from sched_trace_otel.transport import make_transport  # noqa: E402

PROTOCOLS = {"http": "http/protobuf", "grpc": "grpc"}


def request(spans: int = 3) -> bytes:
    message = ExportTraceServiceRequest()
    scope = message.resource_spans.add().scope_spans.add()
    for index in range(spans):
        span = scope.spans.add(trace_id=bytes(15) + b"\x01", span_id=bytes(7) + bytes([index + 1]),
                               name="run_batch_cpu", start_time_unix_nano=1, end_time_unix_nano=2)
        attribute = span.attributes.add(key="pp_mb_id")
        attribute.value.int_value = index
    return message.SerializeToString()


def send(receiver: OtlpReceiver, timeout: float = 5.0) -> Any:
    target = OtlpTarget(PROTOCOLS[receiver.protocol], receiver.endpoint, timeout=timeout, insecure=True)
    transport = make_transport(target)
    try:
        return transport.send(request(), timeout)
    finally:
        transport.close()


@pytest.fixture(params=["http", "grpc"])
def receiver(request: Any) -> Any:
    with OtlpReceiver(request.param) as server:
        yield server


def test_ok_stores_every_span_with_its_attributes(receiver: OtlpReceiver) -> None:
    result = send(receiver)
    assert result.ok and result.rejected == 0
    assert receiver.names() == ["run_batch_cpu"] * 3 and receiver.requests == 1
    assert receiver.attribute_values("run_batch_cpu", "pp_mb_id") == [0, 1, 2]
    assert span_attributes(receiver.spans[0][1]) == {"pp_mb_id": 0}


def test_a_partial_success_names_the_rejected_spans(receiver: OtlpReceiver) -> None:
    receiver.rejected = 2
    result = send(receiver)
    assert result.ok and result.rejected == 2


@pytest.mark.parametrize("mode, retryable", [("503", True), ("reject", False)])
def test_failures_store_nothing_and_say_whether_to_retry(receiver: OtlpReceiver, mode: str,
                                                         retryable: bool) -> None:
    receiver.mode = mode
    result = send(receiver)
    assert not result.ok and result.retryable is retryable
    assert receiver.spans == [] and receiver.refused_requests == 1
    receiver.mode = "ok"
    assert send(receiver).ok and len(receiver.spans) == 3


def test_refuse_closes_the_port_and_ok_opens_the_same_one(receiver: OtlpReceiver) -> None:
    port = receiver.port
    receiver.mode = "refuse"
    result = send(receiver)
    assert not result.ok and result.retryable
    receiver.mode = "ok"
    assert receiver.port == port and send(receiver).ok and len(receiver.spans) == 3


def test_hang_holds_the_request_past_the_client_timeout(receiver: OtlpReceiver) -> None:
    receiver.mode = "hang"
    result = send(receiver, timeout=0.5)
    assert not result.ok and result.retryable and receiver.spans == []
    receiver.mode = "ok"
    assert send(receiver).ok
