"""GPU events reach the other exporters unchanged, even when they arrive mid-batch.

The CUDA side is simulated (fakes.FakeCuda); the OpenTelemetry and Perfetto
plugins, their files and readers are real.
"""

from __future__ import annotations

import glob
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import sched_trace
from sched_trace.export import EventBuffer
from sched_trace_cuda import Resolver, Settings, gpu_track_tid, publish
from sched_trace_cuda.recording import GpuStageHooks, ResolverThread

from .fakes import FakeCuda

otel = pytest.importorskip("sched_trace_otel")
perfetto = pytest.importorskip("sched_trace_perfetto.plugin")
traceio = pytest.importorskip("sched_trace.traceio")


@sched_trace.stage("gpu_forward", level=2, microbatch="microbatch")
def forward(microbatch: int) -> None:
    pass


def test_otel_and_perfetto_put_gpu_events_on_their_own_track(tmp_path):
    hooks = GpuStageHooks(SimpleNamespace(cuda=FakeCuda()), Settings(), EventBuffer(64))
    resolver = ResolverThread(Resolver(recycle=hooks.recycle), hooks.handoff, publish, poll_interval=0.001)
    sched_trace.register(hooks, name="cuda-events")
    config = {"plugins": {"otel": {"directory": str(tmp_path / "otel"), "process": False},
                          "perfetto": {"directory": str(tmp_path / "perfetto")}}}
    sched_trace.configure(level=4, config=config, autoload=False,
                          plugins=[otel.OtelPlugin(), perfetto.PerfettoPlugin()])

    @sched_trace.batch("gpu_step", level=1)
    def step() -> None:
        forward(0)
        assert resolver.flush(timeout=10.0)  # forward(0)/gpu is published mid-batch
        forward(1)

    def scheduler() -> None:  # its own thread, so the main thread's identity stays as it was
        sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=1, dp_rank=0)
        step()

    thread = threading.Thread(target=scheduler)
    thread.start()
    thread.join()
    assert resolver.flush(timeout=10.0)
    sched_trace.shutdown(timeout=60.0)  # the files complete; the bound only guards a hang

    (otel_file,) = glob.glob(str(tmp_path / "otel" / "*.jsonl"))
    from sched_trace.traceio import otlp_documents

    spans = [span for _, span in otel.proto_spans(otlp_documents(otel_file))]
    by_trace: dict[bytes, list[str]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span.name)
    batch_traces = [sorted(names) for names in by_trace.values() if "gpu_step" in names]
    gpu_traces = [sorted(names) for names in by_trace.values() if "gpu_forward/gpu" in names]
    assert len(batch_traces) == 1 and batch_traces[0].count("gpu_forward") == 2
    assert "gpu_forward/gpu" not in batch_traces[0]  # never mixed into the CPU batch
    assert len(gpu_traces) == 2
    assert all(any("Scheduler/cuda:0" in name for name in names) for names in gpu_traces)
    # the GPU track carries the CPU stage's rank keys, and each GPU span its micro-batch
    by_id = {span.span_id: span for span in spans}
    cpu_thread = next(by_id[s.parent_span_id] for s in spans if s.name == "gpu_step")
    for span in (s for s in spans if s.name == "gpu_forward/gpu"):
        track = by_id[span.parent_span_id]
        assert "Scheduler/cuda:0" in track.name and track.trace_id == span.trace_id
        for key in ("pp_rank", "tp_rank", "dp_rank", "host_id", "pid"):
            assert attrs(track)[key] == attrs(cpu_thread)[key], key
        assert attrs(track)["thread_label"] == "Scheduler/cuda:0"
    cpu_mb = sorted(attrs(s)["pp_mb_id"] for s in spans if s.name == "gpu_forward")
    assert sorted(attrs(s)["pp_mb_id"] for s in spans if s.name == "gpu_forward/gpu") == cpu_mb == [0, 1]

    events = traceio.read_events([tmp_path / "perfetto"])
    tracks = {event.name: event.rank.thread_label for event in events}
    assert tracks == {"gpu_step": "Scheduler", "gpu_forward": "Scheduler", "gpu_forward/gpu": "Scheduler/cuda:0"}
    assert sorted(e.microbatch for e in events if e.name == "gpu_forward/gpu") == [0, 1]
    cpu_rank = next(e.rank for e in events if e.name == "gpu_forward")
    for event in (e for e in events if e.name == "gpu_forward/gpu"):
        assert (event.rank.host_id, event.rank.pid) == (cpu_rank.host_id, cpu_rank.pid)
        assert (event.rank.pp_rank, event.rank.tp_rank, event.rank.dp_rank) == (1, 0, 0)
        assert event.rank.tid == gpu_track_tid(cpu_rank.tid, 0) != cpu_rank.tid  # a track of its own


def attrs(message: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in message.attributes}
