"""Turn recorded CUDA event pairs into GPU stage events, without ever synchronising.

Pure logic, no torch import: anything with ``query() -> bool`` and
``elapsed_time(other) -> milliseconds`` works as an event, which is what the CPU
tests use.

Placing GPU time on the wall clock: CUDA events only give durations between
events. A GPU event cannot run before the CPU recorded it, so the CPU timestamps
of the stage's start and end are lower bounds for the GPU start and end. Within
one device the resolver chains each pair to the previous one with
``elapsed_time`` and takes the latest of chain and bounds. The estimate is exact
(to launch latency, a few microseconds) as soon as any stage was launched into an
idle stream, which every bubble provides, and it never places GPU work before the
CPU launched it.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Callable, Iterable, NamedTuple, Optional, Protocol

from sched_trace import RankInfo, StageEvent

#: GPU events get span ids from here up, so they never collide with the core's
#: counter (which starts at 1) and a plugin can tell them apart with one comparison.
GPU_SPAN_BASE = 1 << 62
_next_gpu_span_id = itertools.count(GPU_SPAN_BASE).__next__
# Chaining over longer gaps loses precision (elapsed_time is a 32-bit float of ms).
_MAX_CHAIN_GAP_NS = 10_000_000_000


class TimingEvent(Protocol):
    """What the resolver needs from ``torch.cuda.Event``."""

    def query(self) -> bool: ...
    def elapsed_time(self, end_event: Any) -> float: ...


class PendingStage(NamedTuple):
    """A stage whose GPU work may still be running."""

    stage: StageEvent       # the CPU end event
    start: TimingEvent      # recorded on the stream when the stage began
    end: TimingEvent        # recorded on the stream when the stage returned
    device: int
    enqueued_ns: int        # monotonic time it was handed over, for expiry


class DeviceTimeline:
    """Per-device chain: the last resolved event and its estimated wall time."""

    __slots__ = ("ref", "ref_ns")

    def __init__(self) -> None:
        self.ref: Optional[TimingEvent] = None
        self.ref_ns = 0

    def place(self, item: PendingStage, duration_ns: int) -> tuple[int, int]:
        """Wall-clock (start_ns, end_ns) of the item's GPU work."""
        cpu = item.stage
        start_ns = max(cpu.start_ns, cpu.end_ns - duration_ns)
        if self.ref is not None and abs(cpu.start_ns - self.ref_ns) < _MAX_CHAIN_GAP_NS:
            chained = self.ref_ns + round(self.ref.elapsed_time(item.start) * 1e6)
            start_ns = max(start_ns, chained)
        return start_ns, start_ns + duration_ns


class Resolver:
    """Holds pending pairs; ``poll`` resolves the completed ones into GPU events.

    Not thread-safe: one thread (the plugin's resolver thread, or a flush holding
    its lock) calls it at a time.

    :param recycle: receives ``(event, device)`` the resolver no longer needs, for reuse.
    :param suffix: appended to the stage name of the GPU event (``forward/gpu``).
    :param expire_ns: pairs whose end has not completed after this long are
        dropped and counted (a stream that never runs them, a destroyed context).
    """

    def __init__(
        self,
        *,
        recycle: Callable[[TimingEvent, int], None] = lambda event, device: None,
        suffix: str = "/gpu",
        expire_ns: int = 60_000_000_000,
        max_pending: int = 8192,
    ) -> None:
        self.pending: deque[PendingStage] = deque()
        self.timelines: dict[int, DeviceTimeline] = {}
        self.recycle = recycle
        self.suffix = suffix
        self.expire_ns = expire_ns
        self.max_pending = max_pending
        self.resolved = 0
        self.expired = 0
        self.dropped = 0
        self.failed = 0
        self._gpu_ranks: dict[tuple[RankInfo, int], RankInfo] = {}

    def add(self, items: Iterable[PendingStage]) -> None:
        for item in items:
            if len(self.pending) >= self.max_pending:
                self.dropped += 1
                self._release(item.device, item.start, item.end)
                continue
            self.pending.append(item)

    def poll(self, now_ns: int) -> list[StageEvent]:
        """Resolve every pending pair whose end event completed; keep the rest in order."""
        events: list[StageEvent] = []
        still_pending: deque[PendingStage] = deque()
        for item in self.pending:
            try:
                done = item.end.query()
            except Exception:  # a broken context: count it, never raise on the resolver thread
                self.failed += 1
                continue
            if done:
                event = self._resolve(item)
                if event is not None:
                    events.append(event)
            elif now_ns - item.enqueued_ns > self.expire_ns:
                self.expired += 1
            else:
                still_pending.append(item)
        self.pending = still_pending
        return events

    def _resolve(self, item: PendingStage) -> Optional[StageEvent]:
        try:
            duration_ns = max(0, round(item.start.elapsed_time(item.end) * 1e6))
            timeline = self.timelines.get(item.device)
            if timeline is None:
                timeline = self.timelines[item.device] = DeviceTimeline()
            start_ns, end_ns = timeline.place(item, duration_ns)
        except Exception:
            self.failed += 1
            return None
        previous = timeline.ref
        timeline.ref, timeline.ref_ns = item.end, end_ns
        self._release(item.device, item.start, previous)
        self.resolved += 1
        return self.to_event(item, start_ns, end_ns)

    def _release(self, device: int, *events: Optional[TimingEvent]) -> None:
        for event in events:
            if event is not None:
                self.recycle(event, device)

    def to_event(self, item: PendingStage, start_ns: int, end_ns: int) -> StageEvent:
        """The GPU event: a regular StageEvent that every exporter already understands."""
        cpu = item.stage
        attrs = {key: value for key, value in cpu.attrs.items() if key != "requests"}
        attrs["gpu.device"] = item.device
        attrs["gpu.cpu_span_id"] = cpu.span_id
        attrs["gpu.queue_delay_ns"] = start_ns - cpu.start_ns
        if cpu.error is not None:
            attrs["gpu.cpu_error"] = type(cpu.error).__name__
        # parent_id 0: the GPU span is top-level on its own track, so exporters that
        # group a thread's stages until its top-level end never mix it into a CPU scope.
        return StageEvent(
            cpu.name + self.suffix, cpu.level, start_ns, end_ns, self.gpu_rank(cpu.rank, item.device),
            cpu.microbatch, cpu.batch_id, cpu.batch_size, attrs, None, _next_gpu_span_id(), 0,
        )

    def gpu_rank(self, rank: RankInfo, device: int) -> RankInfo:
        """The CPU thread's identity on a track of its own: ``Scheduler/cuda:0``.

        ``tid`` becomes ``tid + (device + 1) << 22``: Linux thread ids stay below
        2**22, so it never collides with a real thread and fits Perfetto's int32.
        """
        key = (rank, device)
        gpu = self._gpu_ranks.get(key)
        if gpu is None:
            if len(self._gpu_ranks) > 4096:
                self._gpu_ranks.clear()
            gpu = self._gpu_ranks[key] = rank.replace(
                thread_label=f"{rank.thread_label}/cuda:{device}", tid=gpu_track_tid(rank.tid, device))
        return gpu


def gpu_track_tid(tid: int, device: int) -> int:
    """The synthetic thread id of the GPU track of thread ``tid`` on ``device``."""
    return tid + ((device + 1) << 22)
