"""The pipeline analysis over a :class:`~._store.SliceStore`, a bucket of steps at a time.

Stage slices are assigned to steps lane by lane (:func:`~._windows.assign`) and
written to buckets of consecutive steps; each bucket is then analysed whole:
busy and communication time per rank and step with vector operations (the union of
intervals clipped to the step's window), the steps' schedules, which steps are
kept, the latency samples. Memory holds one bucket (about ``BUCKET_ROWS`` slices)
and a few numbers per step, never the trace.

Steps analysed in detail (phases, execution order, busy intervals, critical path)
are rebuilt as events and go through the per-step functions of ``pipeline``:
every step for events given in memory, the representative ones (first, median
and worst bubble, last of each schedule) for a large trace read from files.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ._detail import detailed_step, schedule_key
from ._latency import LatencySamples
from ._store import INT_MB, IS_BATCH, OBJECT_MB, ROW, SliceStore, Spill
from ._windows import ROLE_CODES, Steps, assign
from .model import StepSummary, gpipe_bubble_fraction

BUCKET_ROWS = 1 << 18
#: A trace with more analysed steps than this keeps the full detail of representative steps only.
DETAIL_ALL_LIMIT = 1000
BUCKET = np.dtype(ROW.descr[:-1] + [("lane", "<i4"), ("step", "<i8")])
_COMPUTE_ORDER = (ROLE_CODES["forward"], ROLE_CODES["backward"], ROLE_CODES["weight"])


@dataclass
class StepNumbers:
    """Per step (all of them, analysed or not) and lane: what the report's numbers come from."""

    windows: np.ndarray   # (steps, 2) start, end
    present: np.ndarray   # (steps, lanes) the lane takes part: a marker or a stage in the step
    busy: np.ndarray      # (steps, lanes) ns
    comm: np.ndarray      # (steps, lanes) ns of communication not overlapping compute
    ordered: np.ndarray   # (steps, lanes) the lane ran forward/backward/weight stages
    forwards: np.ndarray  # (steps, lanes) forward stages run
    attrs: list           # per step: the attrs of its first lane's marker ({} without)


class Analysis:
    """One run of the analysis; see the module docstring."""

    def __init__(self, store: SliceStore, steps: Steps, skip_steps: int, detail: str,
                 shifts: Mapping[int, int], directory: Optional[str]) -> None:
        self.store, self.steps, self.skip_steps = store, steps, skip_steps
        self.detail, self.shifts, self.directory = detail, shifts, directory
        count, lanes = len(steps.windows), len(steps.lanes)
        self.numbers = StepNumbers(
            np.asarray(steps.windows, np.int64).reshape(-1, 2), np.zeros((count, lanes), bool),
            np.zeros((count, lanes), np.int64), np.zeros((count, lanes), np.int64),
            np.zeros((count, lanes), bool), np.zeros((count, lanes), np.int64), [])
        self.kept = np.zeros(count, bool)
        self.latency = LatencySamples(directory)
        self.detailed: dict[int, StepSummary] = {}
        self.bucket_steps = max(1, BUCKET_ROWS // max(1, store.count // max(count, 1)))
        self.buckets: list[Spill] = []

    # --- the passes -------------------------------------------------------------------------------

    def run(self) -> None:
        numbers = self.numbers
        for lane, markers in enumerate(self.steps.markers):
            numbers.present[:markers.size, lane] = True
        numbers.attrs = self._step_attrs()
        self._fill_buckets()
        seen: Counter = Counter()
        for bucket in range(len(self.buckets)):
            rows = self._bucket(bucket)
            self._numbers(rows)
            low, high = self._bucket_range(bucket)
            for k in range(low, high):
                key = schedule_key(self.steps.step_name, numbers.attrs[k], int(numbers.present[k].sum()))
                seen[key] += 1
                self.kept[k] = seen[key] > self.skip_steps
            kept_rows = rows[self.kept[rows["step"]]]
            self.latency.add(kept_rows, self._durations_key(kept_rows))
            if self.detail == "all":
                self._detail(rows, [k for k in range(low, high) if self.kept[k]])

    def finish_detail(self, wanted: Sequence[int]) -> None:
        """Full detail for the given steps, from their buckets."""
        wanted = [k for k in sorted(set(wanted)) if k not in self.detailed]
        for bucket in sorted({k // self.bucket_steps for k in wanted}):
            self._detail(self._bucket(bucket), [k for k in wanted if k // self.bucket_steps == bucket])

    def close(self) -> None:
        for spill in self.buckets:
            spill.close()
            if spill.path is not None and os.path.exists(spill.path):
                os.remove(spill.path)
        self.latency.close()

    # --- steps into buckets ---------------------------------------------------------------------

    def _step_attrs(self) -> list:
        attrs: list = [{} for _ in self.steps.windows]
        for markers in reversed(self.steps.markers):  # the first lane with a marker wins
            for k, attr_id in enumerate(markers["attrs"].tolist()):
                attrs[k] = self.store.attrs[attr_id] if attr_id >= 0 else {}
        return attrs

    def _bucket_range(self, bucket: int) -> tuple[int, int]:
        low = bucket * self.bucket_steps
        return low, min(len(self.steps.windows), low + self.bucket_steps)

    def _fill_buckets(self) -> None:
        count = max(1, math.ceil(len(self.steps.windows) / self.bucket_steps))
        path = (lambda b: None) if self.directory is None else (lambda b: os.path.join(self.directory, f"steps{b}.rows"))
        self.buckets = [Spill(path(b), BUCKET) for b in range(count)]
        for position, lane_index in enumerate(self.steps.lane_index):
            spill = self.store.lane(lane_index).spill
            if spill is None:
                continue
            shift = self.shifts.get(lane_index, 0)
            for rows in spill.chunks():
                stages = rows[(rows["flags"] & IS_BATCH) == 0]
                if shift:
                    stages = stages.copy()
                    stages["start"] += shift
                    stages["end"] += shift
                step = assign(stages, self.steps.markers[position], self.steps.windows)
                mine = step >= 0
                out = np.zeros(int(mine.sum()), BUCKET)
                for name in ROW.names:
                    if name != "pad":
                        out[name] = stages[name][mine]
                out["lane"], out["step"] = position, step[mine]
                if not out.size:
                    continue
                which = out["step"] // self.bucket_steps
                order = np.argsort(which, kind="stable")  # nearly sorted already: steps come in time order
                edges = np.flatnonzero(np.r_[True, which[order][1:] != which[order][:-1], True])
                for first, last in zip(edges[:-1].tolist(), edges[1:].tolist()):
                    self.buckets[int(which[order[first]])].append(out[order[first:last]])

    def _bucket(self, bucket: int) -> np.ndarray:
        parts = list(self.buckets[bucket].chunks())
        rows = np.concatenate(parts) if parts else np.zeros(0, BUCKET)
        return rows[_by_lane_step_start(rows, len(self.steps.windows))]

    # --- numbers of a bucket --------------------------------------------------------------------

    def _numbers(self, rows: np.ndarray) -> None:
        """Busy and communication time of every (step, lane) in the bucket, with vector operations."""
        if not rows.size:
            return
        numbers = self.numbers
        role = self.steps.role_code[rows["name"]]
        compute = role != ROLE_CODES["comm"]
        step, lane = rows["step"], rows["lane"]
        numbers.present[step, lane] = True
        low, high = numbers.windows[step, 0], numbers.windows[step, 1]
        start, end = np.maximum(rows["start"], low), np.minimum(rows["end"], high)
        busy = _union_lengths(lane[compute], step[compute], start[compute], end[compute])
        either = _union_lengths(lane, step, start, end)
        np.add.at(numbers.busy, (busy[1], busy[0]), busy[2])
        np.add.at(numbers.comm, (either[1], either[0]), either[2])
        np.add.at(numbers.comm, (busy[1], busy[0]), -busy[2])
        in_order = np.isin(role, _COMPUTE_ORDER)
        numbers.ordered[step[in_order], lane[in_order]] = True
        forward = role == ROLE_CODES["forward"]
        np.add.at(numbers.forwards, (step[forward], lane[forward]), 1)

    def _durations_key(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        flags = rows["flags"]
        return {"name": rows["name"], "lane": rows["lane"], "duration": rows["end"] - rows["start"],
                "microbatch": np.where(flags & OBJECT_MB, self.store.canonical_microbatch(rows), rows["microbatch"]),
                "is_int": (flags & INT_MB) != 0, "is_object": (flags & OBJECT_MB) != 0}

    # --- detail -------------------------------------------------------------------------------------

    def _detail(self, rows: np.ndarray, wanted: Sequence[int]) -> None:
        if not wanted:
            return
        in_steps = np.isin(rows["step"], wanted)
        chosen = rows[in_steps]
        chosen = chosen[np.lexsort((chosen["order"], -chosen["end"], chosen["start"], chosen["step"], chosen["lane"]))]
        events = self.store.materialize(chosen)  # rows carry the aligned times already
        steps, lanes = chosen["step"], chosen["lane"]
        for k in wanted:
            mine = np.flatnonzero(steps == k)
            per_lane: dict[int, list] = {}
            for i in mine.tolist():
                per_lane.setdefault(int(lanes[i]), []).append(events[i])
            present = np.flatnonzero(self.numbers.present[k]).tolist()
            self.detailed[k] = detailed_step(
                k, self.steps, tuple(self.steps.windows[k]), {lane: per_lane.get(lane, []) for lane in present},
                self._marker_event(k, present))

    def _marker_event(self, k: int, present: list[int]) -> Any:
        for lane in present:
            markers = self.steps.markers[lane]
            if markers.size > k:
                (event,) = self.store.materialize(markers[k:k + 1])
                return event
        return None

    # --- the report -----------------------------------------------------------------------------------

    def theory(self, k: int) -> Optional[float]:
        attrs = self.numbers.attrs[k]
        if attrs.get("schedule") not in ("ScheduleGPipe", "Schedule1F1B"):
            return None
        present = self.numbers.present[k]
        p = int((self.numbers.ordered[k] & present).sum())
        m = attrs.get("n_microbatches") or int(self.numbers.forwards[k][present].max(initial=0))
        return gpipe_bubble_fraction(p, m) if p and m else None


def _by_lane_step_start(rows: np.ndarray, steps: int) -> np.ndarray:
    """The order that groups rows by (lane, step), by start inside a group.

    Rows arrive lane by lane, nearly in time order, so one stable sort of a combined
    key (a merge of long sorted runs) does it when the key fits 63 bits; else a lexsort.
    """
    if not rows.size:
        return np.zeros(0, np.int64)
    offset = rows["start"] - rows["start"].min()
    span = int(offset.max()) + 1
    groups = int(rows["lane"].max() + 1) * steps
    if span.bit_length() + groups.bit_length() <= 62:
        key = (rows["lane"].astype(np.int64) * steps + rows["step"]) * span + offset
        return np.argsort(key, kind="stable")
    return np.lexsort((rows["start"], rows["lane"].astype(np.int64) * steps + rows["step"]))


def _union_lengths(lane: np.ndarray, step: np.ndarray, start: np.ndarray, end: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lane, step, length of the union of the intervals) per group of rows sorted by (lane, step, start).

    Intervals are already clipped to their step's window; windows of one lane never
    overlap and come in order, so a running maximum of the ends never needs a reset
    inside a lane: at a new lane it restarts.
    """
    valid = end > start
    lane, step, start, end = lane[valid], step[valid], start[valid], end[valid]
    if not lane.size:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    new_lane = np.r_[True, lane[1:] != lane[:-1]]
    covered = np.empty_like(end)
    for first, last in _runs(new_lane):
        covered[first:last] = np.maximum.accumulate(end[first:last])
    before = np.r_[np.iinfo(np.int64).min, covered[:-1]]
    before[new_lane] = np.iinfo(np.int64).min
    adds = np.maximum(0, end - np.maximum(start, before))
    group_start = np.flatnonzero(np.r_[True, (lane[1:] != lane[:-1]) | (step[1:] != step[:-1])])
    return lane[group_start], step[group_start], np.add.reduceat(adds, group_start)


def _runs(starts: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(starts).tolist() + [starts.size]
    return list(zip(edges[:-1], edges[1:]))
