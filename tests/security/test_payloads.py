"""No request payload (prompt, token ids) is recorded unless an attribute names it.

A serving engine's batches hand sched-trace its request objects (``requests=``), so
each exporter could copy a prompt into a trace by printing one. Requests with a
distinctive prompt and token ids go through every exporter at once (OTLP-JSON
files, OTLP/HTTP to a real receiver, Perfetto native and Chrome JSON, Prometheus),
with per-request spans on; then every output file, every received span and the
metrics exposition are searched for them. One prompt that the configuration
does name in an attribute must appear: the search can find what it looks for.
"""

from __future__ import annotations

from typing import Any

import pytest

import sched_trace

pytest.importorskip("sched_trace_otel")
pytest.importorskip("sched_trace_perfetto")
pytest.importorskip("sched_trace_prometheus")

import prometheus_client  # noqa: E402
from sched_trace_otel import OtelPlugin  # noqa: E402
from sched_trace_perfetto import PerfettoPlugin  # noqa: E402
from sched_trace_prometheus import PrometheusPlugin  # noqa: E402

from tests.security.engine import Engine, Request  # noqa: E402

from sched_trace.testing import OtlpReceiver  # noqa: E402

MODULE = "tests.security.engine"
SECRET_PROMPT = "ZEPHYR-QUOKKA prompt text"
SECRET_TOKENS = [918273645, 564738291, 777000333]
SECRET_STOP = "STOP-WORD-MARMOSET"
NAMED_PROMPT = "PERMITTED-PANGOLIN prompt"
TARGETS = [
    {"target": f"{MODULE}:Engine.add_request", "kind": "request", "phase": "arrived",
     "request_id": "request.rid", "prompt_tokens": "len(request.prompt_token_ids)"},
    {"target": f"{MODULE}:Engine.finish", "kind": "request", "phase": "finished",
     "request_id": "request.rid", "output_tokens": "len(request.output_token_ids)"},
    {"target": f"{MODULE}:Engine.step", "kind": "batch", "stage": "decode_step"},
    {"target": f"{MODULE}:Engine.run_batch", "stage": "run_batch_cpu", "level": 4, "microbatch": "mb_id",
     "batch_size": "len(batch.reqs)", "requests": "batch.reqs"},
    {"target": f"{MODULE}:Engine.log_prompt", "stage": "log_prompt", "attrs": {"prompt": "request.prompt"}},
]


def serve(engine: Engine) -> None:
    secret = [Request(f"req-{i}", f"{SECRET_PROMPT} {i}", [SECRET_TOKENS[i], 42 + i],
                      sampling={"stop": SECRET_STOP}) for i in range(3)]
    for request in secret:
        engine.add_request(request)
    for _ in range(3):
        engine.step()
    named = Request("req-named", NAMED_PROMPT, [7, 8])
    engine.log_prompt(named)  # the one place a prompt is asked for
    sched_trace.request_event("first_token", "req-0", prompt_tokens=2, model="tiny")
    for request in secret:
        engine.finish(request)


def needles(text: str) -> set[str]:
    found = {needle for needle in (SECRET_PROMPT, SECRET_STOP) if needle in text}
    return found | {str(token) for token in SECRET_TOKENS if str(token) in text}


@pytest.fixture
def exporters(tmp_path: Any):
    started: list = []

    def start(process: bool, perfetto_format: str, receiver: OtlpReceiver) -> dict:
        plugins = {
            "otel": OtelPlugin(directory=str(tmp_path / "otel"), exporter="file,http/protobuf",
                               endpoint=receiver.endpoint, process=process, requests="spans"),
            "perfetto": PerfettoPlugin(directory=str(tmp_path / "perfetto"), format=perfetto_format,
                                       process=process),
            "prometheus": PrometheusPlugin(),
        }
        for name, plugin in plugins.items():
            sched_trace.register(plugin, name=name)
            started.append(plugin)
        sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=0, dp_rank=0)
        sched_trace.configure(level=9, config={"instrument": TARGETS}, autoload=False)
        return plugins

    yield start
    sched_trace.shutdown()
    sched_trace.uninstrument()
    for plugin in started:
        sched_trace.unregister(plugin)


@pytest.mark.parametrize("process,perfetto_format", [(True, "perfetto"), (False, "chrome")],
                         ids=["exporter-processes-perfetto", "exporter-threads-chrome"])
def test_no_exporter_records_a_prompt_or_token_ids(exporters, tmp_path, process, perfetto_format):
    receiver = OtlpReceiver("http").start()
    try:
        plugins = exporters(process, perfetto_format, receiver)
        serve(Engine())
        sched_trace.flush(timeout=30.0)
        exposition = prometheus_client.generate_latest(plugins["prometheus"].registry).decode()
        sched_trace.shutdown(timeout=30.0)
    finally:
        receiver.stop()
    outputs = {str(path): path.read_bytes().decode("utf-8", "replace")
               for path in tmp_path.rglob("*") if path.is_file()}
    assert any("otel" in name for name in outputs) and any("perfetto" in name for name in outputs)
    spans = [span for _, span in receiver.spans]
    # The per-request fan-out ran: stage spans copied per request carry its id.
    fanned_out = {kv.value.string_value for s in spans for kv in s.attributes if kv.key == "rid"}
    assert {"req-0", "req-1", "req-2"} <= fanned_out
    outputs["received spans"] = "\n".join(str(span) for span in spans)
    outputs["prometheus"] = exposition
    assert "sched_trace" in exposition
    leaks = {name: needles(text) for name, text in outputs.items() if needles(text)}
    assert leaks == {}
    # The prompt the configuration named is there: the search finds what it looks for.
    assert NAMED_PROMPT in outputs["received spans"]
    assert any(NAMED_PROMPT in text for name, text in outputs.items() if "perfetto" in name)
