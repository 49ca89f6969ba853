"""Hosts' clocks aligned from the pipeline itself: micro-batch order bounds each host's offset.

Processes of one host share a monotonic clock and are placed exactly by the
offsets they recorded (``traceio.align_offsets``). Hosts share nothing: NTP leaves
them milliseconds apart, more than a micro-batch's forward. But a pipeline's
hand-offs order events across hosts, as a round trip does:

* the *n*-th forward of micro-batch *m* on stage *s + 1* starts after the *n*-th
  forward of *m* on stage *s* ended, which bounds ``shift(B) - shift(A)`` from below
  (A runs stage *s*, B stage *s + 1*);
* training: the *n*-th backward of *m* on stage *s* starts after the one on stage
  *s + 1* ended, which bounds it from above;
* serving (no backward): micro-batch *m*'s outputs go back to the first stage, whose
  *(n+1)*-th forward of *m* starts after the last stage's *n*-th ended.

Each host pair with both bounds gets the middle of its interval, with half its
width as the uncertainty; hosts are placed from the reference host (the one
running the first stage) along such pairs. A host with no two-sided flow to a
placed host keeps its recorded clock, and the result says so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np


#: Hand-offs kept per lane: enough for the tightest gaps, bounded memory on a long trace.
SAMPLES_PER_LANE = 1 << 17
_FORWARD, _BACKWARD = 0, 1


@dataclass(frozen=True)
class HostAlignment:
    """One host's clock: the shift added to its recorded times, and how sure that is."""

    host: str
    shift_ns: int
    uncertainty_ns: Optional[int]  # half the interval's width; None when not estimated
    reference: bool = False
    handoffs: int = 0  # cross-host hand-offs that bounded it
    note: str = ""

    def describe(self) -> str:
        if self.reference:
            return f"{self.host}: reference clock"
        if self.uncertainty_ns is None:
            return f"{self.host}: {self.note}"
        text = f"{self.host}: {self.shift_ns / 1e6:+.3f} ms \u00b1 {self.uncertainty_ns / 1e6:.3f} ms"
        return text + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Alignment:
    """Every host's :class:`HostAlignment`; ``shifts`` maps a host to its shift in ns."""

    hosts: tuple[HostAlignment, ...]
    applied: bool = True

    @property
    def shifts(self) -> dict[str, int]:
        return {h.host: h.shift_ns for h in self.hosts} if self.applied else {}

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "hosts": [
            {"host": h.host, "shift_ns": h.shift_ns, "uncertainty_ns": h.uncertainty_ns, "reference": h.reference,
             "handoffs": h.handoffs, "note": h.note} for h in self.hosts]}

    def describe(self) -> str:
        """One line: what was done to each host's clock."""
        if len(self.hosts) <= 1:
            return "clocks: one host, nothing to align"
        if not self.applied:
            return "clocks: hosts kept as recorded (--no-align)"
        return "clocks aligned from the pipeline's cross-host hand-offs: " + "; ".join(h.describe() for h in self.hosts)


class HandoffLog:
    """Forward and backward slices with an int micro-batch, per lane, as they stream in.

    Each is numbered in time order within its (role, stage, micro-batch) and, for a
    serving engine's compute stages, within its (stage, micro-batch): the *n*-th of
    one lane meets the *n*-th of the next stage's lane. A long trace keeps every
    ``stride``-th number (the same numbers on every lane), at most
    ``SAMPLES_PER_LANE`` per lane.
    """

    def __init__(self) -> None:
        self.parts: dict[int, list[np.ndarray]] = defaultdict(list)
        self.sizes: dict[int, int] = defaultdict(int)
        self.counts: dict[int, dict[tuple, int]] = defaultdict(dict)
        self.stride = 1
        self._roles: list[int] = []
        self._stages: list[int] = []

    def add(self, lane: int, table: Any, rows: np.ndarray) -> None:
        """The given rows of a :class:`~sched_trace.traceio.SliceTable`, all of one lane, in file order."""
        roles, stages = self._codes(table.catalog)
        rows = rows[~table.is_batch[rows] & (table.microbatch_kind[rows] == 1)]
        role = roles[table.name[rows]]
        stage = stages[table.rank[rows]]
        keep = (role != _OTHER) & (stage >= 0)
        rows, role, stage = rows[keep], role[keep], stage[keep]
        if not rows.size:
            return
        found = np.zeros(rows.size, _SAMPLE)
        found["role"], found["stage"], found["mb"] = role, stage, table.microbatch[rows]
        found["start"], found["end"] = table.start_ns[rows], table.end_ns[rows]
        counts = self.counts[lane]
        found["n"] = _numbered(found, counts, (found["role"], found["stage"], found["mb"]), "fb")
        found["n_any"] = _numbered(found, counts, (np.zeros_like(found["role"]), found["stage"], found["mb"]), "any")
        self.parts[lane].append(found[(found["n"] % self.stride == 0) | (found["n_any"] % self.stride == 0)])
        self.sizes[lane] += int(self.parts[lane][-1].size)
        while self.sizes[lane] > SAMPLES_PER_LANE:  # keep every other number from now on, on every lane
            self.stride *= 2
            for other, parts in self.parts.items():
                kept = [part[(part["n"] % self.stride == 0) | (part["n_any"] % self.stride == 0)] for part in parts]
                self.parts[other] = kept
                self.sizes[other] = sum(part.size for part in kept)

    def _codes(self, catalog: Any) -> tuple[np.ndarray, np.ndarray]:
        from ._detail import stage_role

        while len(self._roles) < len(catalog.names):
            role = stage_role(catalog.names[len(self._roles)])
            self._roles.append({"forward": _FORWARD, "backward": _BACKWARD, "compute": _COMPUTE}.get(role, _OTHER))
        while len(self._stages) < len(catalog.ranks):
            self._stages.append(_stage_index(catalog.ranks[len(self._stages)]))
        return np.asarray(self._roles or [_OTHER], np.int8), np.asarray(self._stages or [-1], np.int64)

    def samples(self, lane_shifts: Mapping[int, int]) -> tuple[dict[int, np.ndarray], bool]:
        """Per lane: the hand-offs to match, times moved by the lane's shift; and whether this is
        training (backward passes hand gradients back) or serving (compute stages only)."""
        everything = {lane: np.concatenate(parts) for lane, parts in self.parts.items() if parts}
        training = any(bool((found["role"] == _BACKWARD).any()) for found in everything.values())
        result = {}
        for lane, found in everything.items():
            if training:
                found = found[(found["role"] != _COMPUTE) & (found["n"] % self.stride == 0)]
            else:  # serving: every compute stage with a micro-batch carries it forward
                found = found[found["n_any"] % self.stride == 0].copy()
                found["role"], found["n"] = _FORWARD, found["n_any"]
            shift = lane_shifts.get(lane, 0)
            if shift:
                found = found.copy()
                found["start"] += shift
                found["end"] += shift
            result[lane] = found
        return result, training


def _numbered(found: np.ndarray, counts: dict, keys: tuple, family: str) -> np.ndarray:
    """Each row's number within its key, in time order, continuing the counts of earlier chunks."""
    order = np.lexsort((found["start"],) + tuple(reversed(keys)))
    sorted_keys = [key[order] for key in keys]
    first = np.zeros(found.size, bool)
    first[:1] = True
    for key in sorted_keys:
        first[1:] |= key[1:] != key[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(found.size), 0))
    numbers = np.empty(found.size, np.int64)
    numbers[order] = np.arange(found.size) - group_start
    for position in np.flatnonzero(first).tolist():
        key = (family,) + tuple(int(k[position]) for k in sorted_keys)
        rows = order[position:np.searchsorted(group_start, position, side="right")]
        numbers[rows] += counts.get(key, 0)
        counts[key] = counts.get(key, 0) + rows.size
    return numbers


def align_hosts(log: HandoffLog, host_of: Mapping[int, str], lane_shifts: Mapping[int, int]) -> Alignment:
    """Each host's clock shift, from the hand-offs ``log`` saw (times moved by ``lane_shifts`` first)."""
    hosts = sorted(set(host_of.values()))
    if len(hosts) <= 1:
        return Alignment(tuple(HostAlignment(h, 0, 0, reference=True) for h in hosts))
    samples, training = log.samples(lane_shifts)
    bounds = _bounds(samples, host_of, training)
    return Alignment(_place(hosts, _reference(samples, host_of, hosts), bounds))


def _stage_index(rank: Any) -> int:
    for key, value in rank.extra:
        if key == "stage_index" and isinstance(value, int):
            return value
    return -1 if rank.pp_rank is None else rank.pp_rank


_SAMPLE = np.dtype([("role", "i1"), ("stage", "<i8"), ("mb", "<i8"), ("n", "<i8"), ("n_any", "<i8"),
                    ("start", "<i8"), ("end", "<i8")])
_FORWARD, _BACKWARD, _COMPUTE, _OTHER = 0, 1, 2, 3


def _bounds(samples: Mapping[int, np.ndarray], host_of: Mapping[int, str], training: bool
            ) -> dict[tuple[str, str], list]:
    """Per host pair (A, B): [lowest, highest shift(B) - shift(A), hand-offs seen]."""
    bounds: dict[tuple[str, str], list] = defaultdict(lambda: [-np.inf, np.inf, 0])
    stages = {lane: set(np.unique(found["stage"]).tolist()) for lane, found in samples.items()}
    last = max((max(s) for s in stages.values() if s), default=0)
    for a, found_a in samples.items():
        for b, found_b in samples.items():
            if host_of[a] == host_of[b]:
                continue
            pair = bounds[(host_of[a], host_of[b])]
            for stage in stages[a]:
                if stage + 1 in stages[b]:  # A runs stage s, B stage s + 1
                    _forward_bound(found_a, found_b, stage, pair)
                    if training:
                        _backward_bound(found_a, found_b, stage, pair)
                if not training and stage == last and 0 in stages[b] and last > 0:
                    _return_bound(found_a, found_b, last, pair)
    return dict(bounds)


def _matched(first: np.ndarray, second: np.ndarray, n_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``first`` and ``second`` with the same (micro-batch, n + n_offset)."""
    key_a = first["mb"] * (1 << 32) + first["n"] + n_offset
    key_b = second["mb"] * (1 << 32) + second["n"]
    _, left, right = np.intersect1d(key_a, key_b, assume_unique=True, return_indices=True)
    return first[left], second[right]


def _select(found: np.ndarray, role: int, stage: int) -> np.ndarray:
    return found[(found["role"] == role) & (found["stage"] == stage)]


def _forward_bound(found_a: np.ndarray, found_b: np.ndarray, stage: int, pair: list) -> None:
    a, b = _matched(_select(found_a, _FORWARD, stage), _select(found_b, _FORWARD, stage + 1))
    if a.size:  # b's forward starts after a's ended: shift_B - shift_A >= end_a - start_b
        pair[0] = max(pair[0], int((a["end"] - b["start"]).max()))
        pair[2] += int(a.size)


def _backward_bound(found_a: np.ndarray, found_b: np.ndarray, stage: int, pair: list) -> None:
    a, b = _matched(_select(found_a, _BACKWARD, stage), _select(found_b, _BACKWARD, stage + 1))
    if a.size:  # a's backward starts after b's ended: shift_B - shift_A <= start_a - end_b
        pair[1] = min(pair[1], int((a["start"] - b["end"]).min()))
        pair[2] += int(a.size)


def _return_bound(found_last: np.ndarray, found_first: np.ndarray, last: int, pair: list) -> None:
    """Serving: the first stage's next forward of a micro-batch waits for the last stage's output.
    ``pair`` is (last stage's host, first stage's host): shift_first - shift_last >= end_last - start_first."""
    a, b = _matched(_select(found_last, _FORWARD, last), _select(found_first, _FORWARD, 0), n_offset=1)
    if a.size:
        pair[0] = max(pair[0], int((a["end"] - b["start"]).max()))
        pair[2] += int(a.size)


def _reference(samples: Mapping[int, np.ndarray], host_of: Mapping[int, str], hosts: list[str]) -> str:
    """The host running the first stage (else the first host by name)."""
    best: Optional[tuple[int, str]] = None
    for lane, found in samples.items():
        if found.size:
            candidate = (int(found["stage"].min()), host_of[lane])
            best = candidate if best is None or candidate < best else best
    return best[1] if best is not None else hosts[0]


def _place(hosts: list[str], reference: str, bounds: Mapping[tuple[str, str], list]) -> tuple[HostAlignment, ...]:
    """Hosts placed from the reference along pairs bounded from both sides (breadth first)."""
    interval: dict[tuple[str, str], tuple[float, float, int]] = {}
    for (a, b), (low, high, count) in bounds.items():
        for key, lo, hi in (((a, b), low, high), ((b, a), -high, -low)):
            old = interval.get(key, (-np.inf, np.inf, 0))
            interval[key] = (max(old[0], lo), min(old[1], hi), old[2] + count)
    placed: dict[str, HostAlignment] = {reference: HostAlignment(reference, 0, 0, reference=True)}
    frontier = [reference]
    while frontier:
        nxt = []
        for a in frontier:
            for b in hosts:
                low, high, count = interval.get((a, b), (-np.inf, np.inf, 0))
                if b in placed or not (np.isfinite(low) and np.isfinite(high)):
                    continue
                base = placed[a]
                note = "" if low <= high else f"hand-offs disagree by {(low - high) / 1e6:.3f} ms (clock drift?)"
                shift = base.shift_ns + int(round((low + high) / 2))
                uncertainty = (base.uncertainty_ns or 0) + int(round(abs(high - low) / 2))
                placed[b] = HostAlignment(b, shift, uncertainty, handoffs=count,
                                          note=note if base.reference else (note or f"via {a}"))
                nxt.append(b)
        frontier = nxt
    for host in hosts:
        if host not in placed:
            placed[host] = HostAlignment(host, 0, None, note="no cross-host hand-off bounds it from both sides: "
                                                            "recorded clock kept")
    return tuple(placed[h] for h in hosts)
