"""Chrome trace JSON (the Trace Event Format): write incrementally, read back exactly.

Written so that Holistic Trace Analysis accepts it (top-level
``distributedInfo.rank``; a ``ProfilerStep#N`` slice over each top-level batch,
as torch.profiler marks its steps) and Perfetto and chrome://tracing open it. The header
goes first and the events follow one per line, so a file cut short by a crash
still loads (viewers tolerate the missing ``]}``; so does :func:`read_chrome`).

Timestamps are microseconds written as exact decimal text (``1732.123`` keeps
every nanosecond); the reader parses them as ``Decimal`` so nothing is rounded.
Each track's rank (host, process, thread, label, TP/PP/DP: see
:func:`~sched_trace.traceio.track_rank`) gets its own ``tid``, the thread's own
when it has one track; the rank travels in the ``thread_name`` metadata event,
extra rank keys in each slice's ``rank_keys`` argument.
"""

from __future__ import annotations

import json
from typing import IO, Any, Iterable, Mapping, Optional

from .._events import RankInfo
from ._model import (
    Event, ProcessKey, counter_values, event_args, flow_id, rank_to_dict, track_name, track_rank,
)


#: torch.profiler's category for ``ProfilerStep#N``; the reader skips these slices (they repeat a batch).
PROFILER_STEP_CATEGORY = "user_annotation"


def _us(ns: int) -> str:
    """Nanoseconds as exact microsecond text."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


def _dumps(record: Mapping[str, Any], **times_ns: int) -> str:
    """One event as compact JSON; ``times_ns`` (ts, dur) become exact microsecond numbers."""
    text = json.dumps(record, default=str, separators=(",", ":"))
    if not times_ns:
        return text
    return text[:-1] + "".join(f',"{key}":{_us(value)}' for key, value in times_ns.items()) + "}"


class ChromeWriter:
    """Streams events into one Chrome JSON file; ``close`` writes the trailer."""

    def __init__(self, handle: IO[str], *, rank: Optional[int], world_size: Optional[int],
                 clock_offsets: Mapping[ProcessKey, int], counter_attrs: Iterable[str] = ("queue_depth",),
                 flows: bool = True, track_keys: Iterable[str] = (),
                 clock_alignment: Optional[Mapping[str, Any]] = None) -> None:
        self.handle = handle
        self.counter_attrs = tuple(counter_attrs)
        self.flows = flows
        self.track_keys = frozenset(track_keys)
        self._pids: dict[ProcessKey, int] = {}
        self._tids: dict[RankInfo, int] = {}  # by track rank
        self._tracks: dict[RankInfo, RankInfo] = {}  # event rank -> its track's rank
        self._track_names: dict[RankInfo, str] = {}
        self._steps: dict[tuple[int, int], int] = {}
        self._count = 0
        distributed: dict[str, Any] = {"rank": rank if rank is not None else 0}
        if world_size is not None:
            distributed["world_size"] = world_size
        offsets = [{"host_id": h, "pid": p, "clock_offset_ns": o} for (h, p), o in sorted(clock_offsets.items())]
        header = {
            "schemaVersion": 1,
            "distributedInfo": distributed,
            "displayTimeUnit": "ns",
            "sched_trace": {"version": 1, "clock_offsets": offsets},
        }
        if clock_alignment:  # per host: the shift the merge applied, and how sure it is
            header["sched_trace"]["clock_alignment"] = dict(clock_alignment)
        handle.write(json.dumps(header)[:-1] + ',\n"traceEvents":[\n')

    def _emit(self, record: Mapping[str, Any], **times_ns: int) -> None:
        self.handle.write(("" if self._count == 0 else ",\n") + _dumps(record, **times_ns))
        self._count += 1

    def write(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.end_ns is None:
                continue
            pid, tid = self._ids(event.rank)
            record: dict[str, Any] = {
                "ph": "X", "cat": event.kind, "name": event.name, "pid": pid, "tid": tid,
                "args": event_args(event, self.track_keys),
            }
            flow = flow_id(event) if self.flows else None
            if flow is not None:  # flow v2: each slice continues the micro-batch's chain
                record.update(bind_id=f"0x{flow:x}", flow_in=True, flow_out=True)
            if event.kind == "batch" and event.parent_id == 0:
                self._profiler_step(event, pid, tid)
            self._emit(record, ts=event.start_ns, dur=event.end_ns - event.start_ns)
            for name, value in counter_values(event, self.counter_attrs).items():
                self._emit({"ph": "C", "name": f"{self._track_names[event.rank]} {name}", "pid": pid,
                            "args": {name: value}}, ts=event.start_ns)

    def _profiler_step(self, event: Event, pid: int, tid: int) -> None:
        """HTA finds iterations by ``ProfilerStep#N`` slices: one over each step, numbered as
        the batch is (else counted per track), so every rank's step N is the same step."""
        number = event.batch_id
        if not isinstance(number, int) or number < 0:
            number = self._steps[(pid, tid)] = self._steps.get((pid, tid), -1) + 1
        self._emit({"ph": "X", "cat": PROFILER_STEP_CATEGORY, "name": f"ProfilerStep#{number}",
                    "pid": pid, "tid": tid, "args": {"sched_trace_batch": event.name}},
                   ts=event.start_ns, dur=event.end_ns - event.start_ns)

    def _ids(self, rank: RankInfo) -> tuple[int, int]:
        track = self._tracks.get(rank)
        if track is None:
            track = self._tracks[rank] = track_rank(rank, self.track_keys)
            self._track_names[rank] = track_name(track, self.track_keys)
        rank = track
        key = (rank.host_id, rank.pid)
        if key not in self._pids:
            pid = rank.pid
            while pid in self._pids.values():  # another host reused this pid
                pid += 1 << 22
            self._pids[key] = pid
            label = f"{rank.host_id} pid {rank.pid}"
            self._emit({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}})
        pid = self._pids[key]
        if rank not in self._tids:
            # The real tid when this is the thread's only rank track, else a fresh one.
            taken = {t for r, t in self._tids.items() if (r.host_id, r.pid) == key}
            tid = rank.tid
            while tid in taken:
                tid += 1 << 22
            self._tids[rank] = tid
            self._emit({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                        "args": {"name": track_name(rank, self.track_keys), "sched_trace_rank": rank_to_dict(rank)}})
            order = ((rank.pp_rank or 0) * 1000 + (rank.dp_rank or 0)) * 1000 + (rank.tp_rank or 0)
            self._emit({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                        "args": {"sort_index": order}})
        return pid, self._tids[rank]

    def close(self) -> None:
        self.handle.write("\n]}\n")
        self.handle.flush()


def _is_profiler_step(record: Mapping[str, Any]) -> bool:
    """A ``ProfilerStep#N`` that ChromeWriter drew over a batch (a torch.profiler one stays an event)."""
    return record.get("cat") == PROFILER_STEP_CATEGORY and "sched_trace_batch" in (record.get("args") or {})
