"""GPU busy time per rank in the analysis and in ``sched-trace report``, from ``<stage>/gpu`` events.

The events are built with known intervals (the ground truth is the arithmetic
below), and, end to end, recorded through the real plugin hooks and resolver on
the simulated GPU of fakes.FakeCuda and written by the real Perfetto plugin.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import sched_trace
from sched_trace import BatchEvent, RankInfo, StageEvent
from sched_trace.export import EventBuffer
from sched_trace.analysis import gpu_busy, pipeline_report
from sched_trace_cuda import GPU_SPAN_BASE, Resolver, Settings, gpu_track_tid, publish
from sched_trace_cuda.recording import GpuStageHooks, ResolverThread

from .fakes import FakeCuda

MS = 1_000_000
STEPS = 3


def synthetic_events() -> list[Any]:
    """Two ranks; per step two forwards on the CPU and their GPU work (overlapping on rank 1)."""
    events: list[Any] = []
    span = iter(range(1, 10_000)).__next__
    for pp in (0, 1):
        cpu = RankInfo(host_id="n0", pid=100 + pp, tid=200, thread_label="Scheduler", tp_rank=0, pp_rank=pp, dp_rank=0)
        gpu = cpu.replace(thread_label="Scheduler/cuda:0", tid=gpu_track_tid(200, 0))
        for step in range(STEPS):
            base = step * 100 * MS
            batch_id = span()
            events.append(BatchEvent("step", 1, base, base + 90 * MS, cpu, None, step, 8, {}, None, batch_id, 0))
            for mb in (0, 1):
                start = base + (10 + 30 * mb) * MS
                events.append(StageEvent("forward", 2, start, start + 20 * MS, cpu, mb, step, 8, {}, None,
                                         span(), batch_id))
                # rank 0: 25 ms of GPU work per forward; rank 1: 35 ms, so its two overlap by 5 ms
                gpu_ms = 25 if pp == 0 else 35
                events.append(StageEvent("forward/gpu", 2, start + 2 * MS, start + (2 + gpu_ms) * MS, gpu, mb, step,
                                         8, {"gpu.device": 0}, None, GPU_SPAN_BASE + span(), 0))
    return events


def test_gpu_busy_per_rank_next_to_its_scheduler_thread() -> None:
    rows = {row.cpu_lane.pp_rank: row for row in gpu_busy(pipeline_report(synthetic_events()))}
    assert sorted(rows) == [0, 1]
    assert rows[0].busy_ns == STEPS * 2 * 25 * MS
    assert rows[1].busy_ns == STEPS * (2 * 35 - 5) * MS  # a union: the overlap counts once
    for row in rows.values():
        assert row.device == 0 and row.steps == STEPS
        assert row.cpu_busy_ns == STEPS * 2 * 20 * MS
        assert row.lane.thread_label == "Scheduler/cuda:0" and row.lane.pid == row.cpu_lane.pid
        assert row.busy_ratio == pytest.approx(row.busy_ns / row.step_ns)
        assert row.lane.label == f"PP{row.cpu_lane.pp_rank}/cuda:0"


def test_no_gpu_events_no_gpu_rows() -> None:
    events = [e for e in synthetic_events() if not e.name.endswith("/gpu")]
    assert gpu_busy(pipeline_report(events)) == ()


@sched_trace.stage("forward", level=2, microbatch="microbatch")
def forward(microbatch: int) -> None:
    pass


def test_report_command_shows_gpu_busy_from_perfetto_files(tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("rich")
    perfetto = pytest.importorskip("sched_trace_perfetto.plugin")
    from sched_trace import cli

    hooks = GpuStageHooks(SimpleNamespace(cuda=FakeCuda()), Settings(), EventBuffer(256))
    resolver = ResolverThread(Resolver(recycle=hooks.recycle), hooks.handoff, publish, poll_interval=0.001)
    sched_trace.register(hooks, name="cuda-events")
    sched_trace.configure(level=4, autoload=False, plugins=[perfetto.PerfettoPlugin(directory=str(tmp_path / "t"))])

    @sched_trace.batch("step", level=1)
    def step() -> None:
        for microbatch in range(2):
            forward(microbatch)

    def scheduler() -> None:
        sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=0, dp_rank=0)
        for _ in range(STEPS):
            step()

    thread = threading.Thread(target=scheduler)
    thread.start()
    thread.join()
    assert resolver.flush(timeout=10.0)
    sched_trace.shutdown(timeout=60.0)  # the files complete; the bound only guards a hang
    sched_trace.unregister(hooks)
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "t"), "--out", str(tmp_path / "out"), "--no-png",
                     "--skip-steps", "0"]) == 0
    printed = capsys.readouterr().out
    assert "GPU busy per rank" in printed
    gpu_table = printed.split("GPU busy per rank", 1)[1]
    row = next(line for line in gpu_table.splitlines() if "PP0" in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[:3] == ["PP0", "cuda:0", str(STEPS)]
