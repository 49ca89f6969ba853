"""Standard OpenTelemetry configuration: ``OTEL_*`` variables select, aim and secure the export.

The receivers are real OTLP/HTTP and OTLP/gRPC servers on 127.0.0.1
(sched_trace.testing.OtlpReceiver); the scheduler runs as its own process with nothing but the
standard variables set, and autoloads the plugin from its entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sched_trace.testing import OtlpReceiver
from sched_trace import ConfigError
from sched_trace_otel import otel_env
from sched_trace_otel.settings import parse

SECRET = "s3cr3t-t0ken-4f9a"
STEPS, MICROBATCHES = 4, 3
SCHEDULER = textwrap.dedent(f"""
    import json, logging, sys, time
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # everything any library logs
    import sched_trace

    @sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id")
    def run_batch(mb_id):
        return mb_id

    @sched_trace.batch("decode_step", level=1)
    def decode_step():
        for mb_id in range({MICROBATCHES}):
            run_batch(mb_id)

    sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=1, dp_rank=0)
    sched_trace.configure(level=9)          # the otel plugin comes from its entry point
    for _ in range({STEPS}):
        decode_step()
    sched_trace.flush(timeout=float(sys.argv[1]))
    waited = time.monotonic() + 60
    while sys.argv[2:] == ["until-failure"] and time.monotonic() < waited:  # the child reports every 0.5 s
        if sched_trace.stats()["plugins"]["otel"].get("export_failures"):
            break
        time.sleep(0.1)
    print("STATS " + json.dumps(sched_trace.stats(), default=repr))
    sched_trace.shutdown(timeout=float(sys.argv[1]))
""")
SPANS_PER_STEP = 2 + MICROBATCHES  # thread span, batch span, stage spans


def attrs(message: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in message.attributes}


def run_scheduler(tmp_path: Path, env: dict[str, str], flush_s: float = 30.0,
                  *options: str) -> subprocess.CompletedProcess:
    """The scheduler as a user runs it: a fresh process, only the given variables on top."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SCHED_TRACE_"))}
    clean["SCHED_TRACE_BLOCK"] = "perfetto,prometheus,cuda"  # keep this test to the otel plugin
    script = tmp_path / "scheduler.py"
    script.write_text(SCHEDULER)
    return subprocess.run([sys.executable, str(script), str(flush_s), *options], cwd=tmp_path, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def stats_of(result: subprocess.CompletedProcess) -> dict[str, Any]:
    line = next(line for line in result.stdout.splitlines() if line.startswith("STATS "))
    return json.loads(line[6:])["plugins"]["otel"]


def test_only_standard_variables_deliver_to_an_http_receiver_with_headers(tmp_path: Path) -> None:
    receiver = OtlpReceiver("http").start()
    try:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",  # base: /v1/traces added
            # no protocol: http/protobuf, the specification's default
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{SECRET},x-tenant=team-a",
            "OTEL_SERVICE_NAME": "llm-serving",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,k8s.pod.name=engine-0",
        }
        result = run_scheduler(tmp_path, env)
        assert result.returncode == 0, result.stderr
        spans = receiver.spans
        assert len(spans) == STEPS * SPANS_PER_STEP
        resource = attrs(spans[0][0])
        assert resource["service.name"] == "llm-serving"
        assert resource["deployment.environment"] == "staging" and resource["k8s.pod.name"] == "engine-0"
        stages = [span for _, span in spans if span.name == "run_batch_cpu"]
        assert sorted(attrs(s)["pp_mb_id"] for s in stages) == sorted(list(range(MICROBATCHES)) * STEPS)
        assert {h["authorization"] for h in receiver.headers} == {f"Bearer {SECRET}"}
        assert {h["x-tenant"] for h in receiver.headers} == {"team-a"}
        stats = stats_of(result)
        assert stats["spans_exported"] == len(spans) and stats["export_failures"] == 0
        assert not (tmp_path / "sched-trace-out").exists(), "OTLP was asked for, yet local files were written"
        assert SECRET not in result.stdout + result.stderr
    finally:
        receiver.stop()


def test_traces_endpoint_grpc_and_gzip(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    receiver = OtlpReceiver("grpc").start()
    try:
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
               "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"authorization=Bearer {SECRET}"}
        result = run_scheduler(tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert len(receiver.spans) == STEPS * SPANS_PER_STEP
        assert {h["authorization"] for h in receiver.headers} == {f"Bearer {SECRET}"}
        assert SECRET not in result.stdout + result.stderr
    finally:
        receiver.stop()


def test_http_json_protocol_gzipped(tmp_path: Path) -> None:
    receiver = OtlpReceiver("http").start()
    try:
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"}
        result = run_scheduler(tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert {(h["content-type"], h["content-encoding"]) for h in receiver.headers} == {
            ("application/json", "gzip")}
        names = sorted(span.name for _, span in receiver.spans)
        assert names.count("run_batch_cpu") == STEPS * MICROBATCHES and names.count("decode_step") == STEPS
    finally:
        receiver.stop()


def test_secrets_stay_out_of_logs_errors_stats_and_files(tmp_path: Path) -> None:
    """Refused (401), then unreachable, then a malformed header: the token shows up nowhere."""
    receiver = OtlpReceiver("http").start()
    receiver.status = 401
    headers = f"authorization=Bearer%20{SECRET}"
    try:
        refused = run_scheduler(tmp_path, {  # a trace file as well, to grep
            "SCHED_TRACE_OTEL_EXPORTER": "file,otlp,console", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_HEADERS": headers})
    finally:
        receiver.stop()
    assert refused.returncode == 0, refused.stderr
    stats = stats_of(refused)
    assert stats["spans_rejected"] == STEPS * SPANS_PER_STEP and stats["export_failures"] >= 1
    assert "HTTP 401" in refused.stderr  # the failure is reported ...
    assert '"name": "run_batch_cpu"' in refused.stderr  # ... and the console exporter printed the spans
    down = run_scheduler(tmp_path, {
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0.5", "OTEL_EXPORTER_OTLP_HEADERS": headers}, 0.5, "until-failure")
    assert down.returncode == 0, down.stderr
    assert stats_of(down)["export_failures"] >= 1 and "will retry" in down.stderr
    with pytest.raises(ConfigError) as malformed:
        parse({}, environ={"OTEL_TRACES_EXPORTER": "otlp",
                           "OTEL_EXPORTER_OTLP_HEADERS": f"x-tenant=a,authorization Bearer {SECRET}"})
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(malformed.value) and "entry 2" in str(malformed.value)
    target = otel_env.otlp_target("grpc", environ={"OTEL_EXPORTER_OTLP_HEADERS": headers})
    files = "".join(path.read_text(errors="replace") for path in tmp_path.rglob("*") if path.is_file()
                    and path.name != "scheduler.py")
    assert files.count('"name":"run_batch_cpu"') == STEPS * MICROBATCHES  # the file sink wrote every span
    for where, text in {"refused run output": refused.stdout + refused.stderr,
                        "unreachable run output": down.stdout + down.stderr,
                        "the ConfigError": str(malformed.value), "repr(OtlpTarget)": repr(target),
                        "trace files": files}.items():
        assert SECRET not in text, f"the header secret leaked into {where}"
    assert target.redact(f"sent Bearer {SECRET}") == "sent <hidden>"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_trusts_the_certificate_named_by_the_standard_variable(tmp_path: Path) -> None:
    cert, key = tmp_path / "receiver.pem", tmp_path / "receiver-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    receiver = OtlpReceiver("http", tls=(str(cert), str(key))).start()
    try:
        base = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}
        (tmp_path / "untrusted").mkdir()
        untrusted = run_scheduler(tmp_path / "untrusted", base, flush_s=2.0)
        assert untrusted.returncode == 0 and not receiver.spans  # unknown CA: nothing is sent
        trusted = run_scheduler(tmp_path, {**base, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(cert)})
        assert trusted.returncode == 0, trusted.stderr
        assert len(receiver.spans) == STEPS * SPANS_PER_STEP
    finally:
        receiver.stop()


# --- precedence and validation, against parse() with an explicit environment ---------------


@pytest.mark.parametrize("table, environ, expected", [
    ({}, {}, "file"),                                                             # the embedded default
    ({}, {"OTEL_TRACES_EXPORTER": "otlp"}, "http/protobuf"),                      # spec default protocol
    ({}, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ({}, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http/protobuf"),  # per-signal wins
    ({}, {"OTEL_TRACES_EXPORTER": "otlp_proto_grpc"}, "grpc"),
    ({}, {"OTEL_TRACES_EXPORTER": " otlp , console "}, "http/protobuf,console"),   # the SDK's comma list
    ({}, {"OTEL_TRACES_EXPORTER": "none"}, "none"),
    ({}, {"OTEL_TRACES_EXPORTER": ""}, "file"),                                   # empty is unset
    ({"exporter": "file"}, {"OTEL_TRACES_EXPORTER": "otlp"}, "file"),             # the config file wins
    ({"exporter": "file"}, {"OTEL_TRACES_EXPORTER": "otlp", "SCHED_TRACE_OTEL_EXPORTER": "none"}, "none"),
    ({"exporter": "file,otlp"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "file,grpc"),
])
def test_exporter_precedence(table: dict, environ: dict, expected: str) -> None:
    assert parse(table, "sched_trace.toml", environ).exporter == expected


@pytest.mark.parametrize("environ, key", [
    ({"OTEL_TRACES_EXPORTER": "zipkin_nowhere"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "file"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp,none"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
     "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
     "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"},
     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=a,oops"}, "OTEL_RESOURCE_ATTRIBUTES"),
])
def test_bad_standard_variables_fail_at_configure_naming_the_variable(environ: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse({}, "sched_trace.toml", environ)
    assert key in str(error.value)


@pytest.mark.parametrize("table, environ, ratio", [
    ({}, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, 0.25),
    ({}, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, 0.1),
    ({}, {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0),
    ({}, {"OTEL_TRACES_SAMPLER": "always_on"}, 1.0),
    ({}, {"OTEL_TRACES_SAMPLER": "jaeger_remote"}, 1.0),                # not ours to apply: warned, ignored
    ({"batch_every": 10}, {"OTEL_TRACES_SAMPLER": "always_off"}, 1.0),  # sched-trace's own sampling wins
])
def test_sampler_variables_set_the_ratios_left_unset(table: dict, environ: dict, ratio: float) -> None:
    settings = parse(table, "sched_trace.toml", environ)
    assert settings.batch_ratio == ratio and settings.request_ratio == ratio


def test_sampler_ratio_reaches_the_exported_batches(traced: Any, monkeypatch: Any) -> None:
    from otel_scheduler import Batch, run_steps
    from sched_trace.traceio import otlp_documents
    from sched_trace_otel import proto_spans

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    plugin = traced(process=False)
    run_steps([Batch() for _ in range(5)], 2)
    import sched_trace

    sched_trace.flush(timeout=60.0)  # returns once done; the bound only guards a hang
    assert plugin.sched_trace_collect_stats()["sampled_out_batches"] == 5
    files = list(Path(plugin.settings.directory).glob("*.jsonl"))
    assert not files or not [s for f in files for _, s in proto_spans(otlp_documents(f))]


@pytest.mark.parametrize("protocol, environ, endpoint", [
    ("http/protobuf", {}, "http://localhost:4318/v1/traces"),
    ("http/protobuf", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/"}, "https://c:4318/v1/traces"),
    ("http/protobuf", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                       "http://b:2/custom"}, "http://b:2/custom"),
    ("grpc", {}, "http://localhost:4317"),
    ("grpc", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}, "https://c:4317"),
])
def test_endpoint_resolution(protocol: str, environ: dict, endpoint: str) -> None:
    assert otel_env.otlp_target(protocol, environ=environ).endpoint == endpoint


def test_service_name_precedence(monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert parse({}, environ={}).resolved_service_name == "from-attributes"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    assert parse({}, environ={}).resolved_service_name == "from-service-name"
    assert parse({"service_name": "from-config"}, environ={}).resolved_service_name == "from-config"


@pytest.mark.parametrize("environ, insecure", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, False),  # scheme wins
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"}, False),                                           # TLS unless told
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}, True),
])
def test_grpc_plaintext_or_tls(environ: dict, insecure: bool) -> None:
    assert otel_env.otlp_target("grpc", environ=environ).insecure is insecure


def test_a_partial_success_counts_the_rejected_spans(traced: Any) -> None:
    from otel_scheduler import Batch, run_steps

    receiver = OtlpReceiver("http").start()
    receiver.rejected = 2
    try:
        plugin = traced(exporter="http/protobuf", endpoint=receiver.endpoint, process=False)
        run_steps([Batch()], 2)  # one batch scope: thread, batch and two stage spans, in one request
        import sched_trace

        sched_trace.flush(timeout=60.0)  # returns once done; the bound only guards a hang
        stats = plugin.sched_trace_collect_stats()
        assert receiver.requests == 1 and len(receiver.spans) == 4
        assert (stats["spans_exported"], stats["spans_rejected"]) == (2, 2)
    finally:
        receiver.stop()
