"""Lanes, steps and step windows from a :class:`~._store.SliceStore`, without an object per slice.

The definitions are those of the package docstring (``sched_trace.analysis``): a
lane per thread, labelled by its most common PP rank; a step per top-level batch
event of the step's name, aligned by order across lanes; windows shared by every
lane that never overlap; without markers, steps inferred on the first lane. Only
batch events (one per step per rank) are held in memory; the stage slices are read
back from the store once more when steps must be inferred.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .._errors import AnalysisError
from ._store import IS_BATCH, HAS_BATCH_ID, INT_MB, SliceStore
from .model import Lane

ROLE_CODES = {"forward": 0, "backward": 1, "weight": 2, "compute": 3, "comm": 4}
Interval = tuple[int, int]


def lane_identity(store: SliceStore, index: int) -> Lane:
    """The lane's label: its first event's thread, its most common PP rank (ties: the first seen)."""
    info = store.lane(index)
    first = store.catalog.ranks[info.first[1]]
    pp_rank = None
    if info.pp_ranks:
        best = max(info.pp_ranks.values())
        pp_rank = min((key for key, count in info.pp_ranks.items() if count == best), key=lambda k: info.pp_first[k])
    host, pid, tid = info.key
    return Lane(host, pid, tid, first.thread_label, pp_rank, first.replace(pp_rank=pp_rank).track_name)


def sort_rows(rows: np.ndarray) -> np.ndarray:
    """A lane's rows in the analysis' order: by start, longer first, then input order."""
    return rows[np.lexsort((rows["order"], -rows["end"], rows["start"]))]


@dataclass
class Steps:
    """What decides the step windows: lanes in report order, each lane's step markers, the windows."""

    lanes: list[Lane]            # sorted (PP rank, host, pid, tid)
    lane_index: list[int]        # store lane index of each
    role_code: np.ndarray        # by catalog name id
    role_of: dict[str, str]      # name -> role, for the names in the trace
    step_name: Optional[str]
    markers: list[np.ndarray]    # per lane (report order): its step batch rows, sorted
    windows: list[Interval]
    step_source: str
    step_note: str


def find_steps(store: SliceStore, step_name: Optional[str], role_of_name: Any,
               shifts: Optional[Mapping[int, int]] = None) -> Steps:
    """Lanes, roles, the step name, each lane's markers and the shared windows.

    ``shifts`` (ns per store lane index) moves a lane's slices first: clock alignment.
    """
    shifts = shifts or {}
    order = sorted(range(len(store.lanes)), key=lambda i: lane_identity(store, i).sort_key)
    lanes = [lane_identity(store, i) for i in order]
    names = store.catalog.names
    role_code = np.full(len(names), ROLE_CODES["compute"], np.int8)
    role_of = {}
    for name_id in sorted(store.names_used):
        role = role_of_name(names[name_id])
        role_of[names[name_id]] = role
        role_code[name_id] = ROLE_CODES[role]
    batches, batch_lane = store.batch_rows()
    batches = _shifted(batches, batch_lane, shifts)
    per_lane = [sort_rows(batches[batch_lane == index]) for index in order]
    tops = [_top_batches(rows) for rows in per_lane]
    chosen = step_name if step_name is not None else _most_common_name(tops, names)
    name_id = names.index(chosen) if chosen in names else -1
    markers = [rows[rows["name"] == name_id] for rows in tops]
    if step_name is not None and lanes and not any(m.size for m in markers):
        found = sorted({names[int(i)] for rows in tops for i in rows["name"]})
        raise AnalysisError(f"step_name={step_name!r}: no top-level batch event has that name "
                            f"(batch events in the trace: {', '.join(found) or 'none'})")
    steps = Steps(lanes, order, role_code, role_of, chosen, markers, [], "", "")
    _choose_windows(store, steps, shifts)
    return steps


def _shifted(rows: np.ndarray, lanes: np.ndarray, shifts: Mapping[int, int]) -> np.ndarray:
    if not shifts or not rows.size:
        return rows
    rows = rows.copy()
    for lane, shift in shifts.items():
        mine = lanes == lane
        rows["start"][mine] += shift
        rows["end"][mine] += shift
    return rows


def _top_batches(rows: np.ndarray) -> np.ndarray:
    """Batch rows not nested in another batch of the same lane."""
    nested = np.isin(rows["parent_id"], rows["span_id"])
    return rows[~nested]


def _most_common_name(tops: list[np.ndarray], names: list[str]) -> Optional[str]:
    counts: Counter = Counter()
    for rows in tops:
        counts.update(names[int(i)] for i in rows["name"].tolist())
    return counts.most_common(1)[0][0] if counts else None


def _choose_windows(store: SliceStore, steps: Steps, shifts: Mapping[int, int]) -> None:
    if any(m.size for m in steps.markers):
        steps.step_source, steps.step_note = "markers", f"one step per {steps.step_name!r} batch event"
        steps.windows = marker_windows(steps.markers)
        return
    steps.windows = _inferred_windows(store, steps, shifts)
    if steps.windows:
        steps.step_source = "inferred"
        steps.step_note = (f"no step markers (batch events): a step starts at each forward of "
                           f"micro-batch 0 after a backward on {steps.lanes[0].label}")
    else:
        steps.windows = _whole_trace(store, shifts)
        steps.step_source = "whole-trace"
        steps.step_note = ("no step markers (batch events) and no training steps to infer: "
                           "the whole trace is one step")


def marker_windows(markers: list[np.ndarray]) -> list[Interval]:
    """One shared window per step index; windows tile the timeline without overlap."""
    count = max((m.size for m in markers), default=0)
    if count == 0:
        return []
    starts = np.full((len(markers), count), np.iinfo(np.int64).max)
    ends = np.full((len(markers), count), np.iinfo(np.int64).min)
    for lane, rows in enumerate(markers):
        starts[lane, :rows.size] = rows["start"]
        ends[lane, :rows.size] = rows["end"]
    start = starts.min(axis=0)
    end = ends.max(axis=0)
    start[1:] = np.maximum(start[1:], end[:-1])  # not before every lane left the step before
    return list(zip(start.tolist(), end.tolist()))


def _stage_rows(store: SliceStore, shifts: Mapping[int, int]) -> Any:
    for index in range(len(store.lanes)):
        spill = store.lane(index).spill
        if spill is None:
            continue
        for rows in spill.chunks():
            stages = rows[(rows["flags"] & IS_BATCH) == 0]
            if shifts.get(index):
                stages = stages.copy()
                stages["start"] += shifts[index]
                stages["end"] += shifts[index]
            yield index, stages


def _whole_trace(store: SliceStore, shifts: Mapping[int, int]) -> list[Interval]:
    if not shifts:
        extent = store.stage_extent if store.stage_extent[0] <= store.stage_extent[1] else store.any_extent
        return [tuple(extent)] if extent[0] <= extent[1] else []  # type: ignore[list-item]
    low, high, any_low, any_high = 1 << 63, -(1 << 63), 1 << 63, -(1 << 63)
    for index in range(len(store.lanes)):
        for rows in (store.lane(index).spill.chunks() if store.lane(index).spill else ()):
            shift = shifts.get(index, 0)
            any_low, any_high = min(any_low, int(rows["start"].min()) + shift), max(any_high, int(rows["end"].max()) + shift)
            stages = rows[(rows["flags"] & IS_BATCH) == 0]
            if stages.size:
                low, high = min(low, int(stages["start"].min()) + shift), max(high, int(stages["end"].max()) + shift)
    if low <= high:
        return [(low, high)]
    return [(any_low, any_high)] if any_low <= any_high else []


def _step_starts(rows: np.ndarray, role_code: np.ndarray) -> list[int]:
    """Where the first lane starts each step: a forward of micro-batch 0 after some backward."""
    roles = np.where(rows["flags"] & IS_BATCH, -1, role_code[rows["name"]])
    backward = (roles == ROLE_CODES["backward"]) | (roles == ROLE_CODES["weight"])
    if not (role_code[rows["name"]] == ROLE_CODES["backward"]).any() and \
            not (role_code[rows["name"]] == ROLE_CODES["weight"]).any():
        return []
    first_forward = (roles == ROLE_CODES["forward"]) & ((rows["flags"] & INT_MB) != 0) & (rows["microbatch"] == 0)
    marks = np.flatnonzero(backward | first_forward)
    if not marks.size:
        return []
    is_start = first_forward[marks] & np.r_[True, backward[marks][:-1]]
    return rows["start"][marks[is_start]].tolist()


def _inferred_windows(store: SliceStore, steps: Steps, shifts: Mapping[int, int]) -> list[Interval]:
    """Step windows cut where the first lane starts each step (no step markers)."""
    if not steps.lanes:
        return []
    first = steps.lane_index[0]
    spill = store.lane(first).spill
    rows = np.concatenate(list(spill.chunks())) if spill is not None else np.zeros(0)
    if shifts.get(first):
        rows = rows.copy()
        rows["start"] += shifts[first]
        rows["end"] += shifts[first]
    starts = _step_starts(sort_rows(rows), steps.role_code) if rows.size else []
    if not starts:
        return []
    begin, finish = 1 << 63, -(1 << 63)
    chunks = list(_stage_rows(store, shifts))
    for _, stages in chunks:
        if stages.size:
            begin, finish = min(begin, int(stages["start"].min())), max(finish, int(stages["end"].max()))
    cuts = np.asarray([begin] + starts[1:] + [finish + 1], np.int64)
    last_end = np.full(cuts.size - 1, np.iinfo(np.int64).min)
    for _, stages in chunks:
        window = np.searchsorted(cuts, stages["start"], side="right") - 1
        inside = (window >= 0) & (window < cuts.size - 1)
        np.maximum.at(last_end, window[inside], stages["end"][inside])
    windows = []
    for k, (low, high) in enumerate(zip(cuts[:-1].tolist(), cuts[1:].tolist())):
        # A step ends when its last stage does, not when the next step starts (optimizer time).
        seen = last_end[k] != np.iinfo(np.int64).min
        windows.append((low, min(high, int(last_end[k])) if seen else high))
    return windows


def assign(rows: np.ndarray, markers: np.ndarray, windows: list[Interval]) -> np.ndarray:
    """Step index of each stage row of one lane (-1: none): by batch id, else by time.

    A batch id that names exactly one of the lane's steps decides; otherwise the
    first step span (the lane's markers, or the windows when it has none) that the
    slice starts in.
    """
    step = np.full(rows.size, -1, np.int64)
    if markers.size:
        spans = np.stack([markers["start"], markers["end"]], axis=1)
    else:
        spans = np.asarray(windows, np.int64).reshape(-1, 2)
    decided = np.zeros(rows.size, bool)
    if markers.size:
        with_id = np.flatnonzero((markers["flags"] & HAS_BATCH_ID) != 0)
        unique, first, counts = np.unique(markers["batch_id"][with_id], return_index=True, return_counts=True)
        if unique.size:
            has_id = (rows["flags"] & HAS_BATCH_ID) != 0
            at = np.minimum(np.searchsorted(unique, rows["batch_id"]), unique.size - 1)
            once = has_id & (unique[at] == rows["batch_id"]) & (counts[at] == 1)  # a step's own id
            step[once] = with_id[first[at[once]]]
            decided = once
    rest = np.flatnonzero(~decided)
    if rest.size and spans.size:
        step[rest] = _containing(rows["start"][rest], spans)
    step[step >= len(windows)] = -1
    return step


def _containing(starts: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Index of the first span (in start order) each time falls in, -1 for none."""
    begins, ends = spans[:, 0], spans[:, 1]
    if (ends[:-1] <= begins[1:]).all():  # the usual case: disjoint, a binary search
        k = np.searchsorted(begins, starts, side="right") - 1
        inside = (k >= 0) & (starts < ends[np.maximum(k, 0)])
        return np.where(inside, k, -1)
    found = np.full(starts.size, -1, np.int64)
    for k in range(spans.shape[0] - 1, -1, -1):  # overlapping spans: the first one wins
        found[(begins[k] <= starts) & (starts < ends[k])] = k
    return found
