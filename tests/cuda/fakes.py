"""A CUDA event stand-in on a simulated GPU clock, for the resolver's CPU tests.

It implements exactly what the resolver uses from ``torch.cuda.Event``:
``query()`` and ``elapsed_time(end)`` in milliseconds.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Optional

from sched_trace import RankInfo, StageEvent

RANK = RankInfo(host_id="node0", pid=100, tid=200, thread_label="Scheduler", tp_rank=0, pp_rank=1, dp_rank=0)
MS = 1_000_000


class FakeEvent:
    def __init__(self, gpu_ns: Optional[int] = None, done: bool = True) -> None:
        self.gpu_ns = gpu_ns  # when the simulated GPU executes it (epoch ns)
        self.done = done
        self.raise_on_query = False

    def query(self) -> bool:
        if self.raise_on_query:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.done

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert self.done and end.done, "elapsed_time on an event that has not completed"
        return (end.gpu_ns - self.gpu_ns) / MS


def cpu_stage(name: str = "forward", start_ns: int = 1_000 * MS, end_ns: int = 1_001 * MS, *,
              span_id: int = 7, error: Optional[BaseException] = None, attrs: Optional[dict] = None) -> StageEvent:
    return StageEvent(name, 2, start_ns, end_ns, RANK, 3, 11, 64, attrs or {}, error, span_id, 5)


class FakeCuda:
    """Stands in for ``torch.cuda`` in GpuStageHooks: Event, current_device, capture state."""

    def __init__(self) -> None:
        self.capturing = False
        self.device = 0
        self.created: list[FakeEvent] = []
        self.initialized = False
        self.queued: list = []

    # torch's lazy initialisation, as far as the plugin uses it
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def _lazy_call(self, callable) -> None:
        if self.initialized:
            callable()
        else:
            self.queued.append(callable)

    def init(self) -> None:
        for callable in self.queued:
            callable()
        self.queued.clear()
        self.initialized = True

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        assert enable_timing
        event = FakeEvent()
        event.recorded = 0
        event.record = lambda: self._record(event)
        self.created.append(event)
        return event

    @staticmethod
    def _record(event: FakeEvent) -> None:
        event.recorded += 1
        event.gpu_ns = time.time_ns()  # an idle simulated GPU runs it at once

    def current_device(self) -> int:
        return self.device

    def is_current_stream_capturing(self) -> bool:
        return self.capturing


def fake_torch(cuda: FakeCuda) -> SimpleNamespace:
    """What the plugin reads from an imported torch module with a CUDA build."""
    return SimpleNamespace(__version__="2.13.0+cu128", version=SimpleNamespace(cuda="12.8"), cuda=cuda)
