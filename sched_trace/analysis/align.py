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
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ._store import INT_MB, IS_BATCH, SliceStore

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


def align_hosts(store: SliceStore, lane_shifts: Mapping[int, int], role_of: Any,
                lanes: Optional[Iterable[int]] = None) -> Alignment:
    """Estimate each host's clock shift from ``store`` (times moved by ``lane_shifts`` first)."""
    names = store.catalog.names
    roles = np.array([role_of(name) for name in names], dtype=object) if names else np.zeros(0, object)
    forward = np.array([r == "forward" for r in roles], bool)
    backward = np.array([r == "backward" for r in roles], bool)  # a weight pass hands nothing on
    compute = np.array([r not in ("comm",) for r in roles], bool)
    stage_of = np.array([_stage_index(rank) for rank in store.catalog.ranks], np.int64)
    lane_list = [info for info in store.lanes.values()]
    hosts = sorted({info.key[0] for info in lane_list})
    if len(hosts) <= 1:
        return Alignment(tuple(HostAlignment(h, 0, 0, reference=True) for h in hosts))
    training = False
    samples = {}
    stride = max(1, max((info.spill.rows if info.spill else 0) for info in lane_list) // SAMPLES_PER_LANE)
    for info in lane_list:
        found = _handoffs(store, info, forward, backward, stage_of, lane_shifts.get(info.index, 0), stride)
        if found is not None:
            samples[info.index] = found
            training |= bool((found["role"] == _BACKWARD).any())
    if not training:  # serving: any compute stage with a micro-batch is the forward
        samples = {}
        for info in lane_list:
            found = _handoffs(store, info, compute, np.zeros_like(compute), stage_of,
                              lane_shifts.get(info.index, 0), stride)
            if found is not None:
                samples[info.index] = found
    bounds = _bounds(samples, {info.index: info.key[0] for info in lane_list}, training)
    reference = _reference(samples, {info.index: info.key[0] for info in lane_list}, hosts)
    return Alignment(_place(hosts, reference, bounds))


def _stage_index(rank: Any) -> int:
    for key, value in rank.extra:
        if key == "stage_index" and isinstance(value, int):
            return value
    return -1 if rank.pp_rank is None else rank.pp_rank


def _handoffs(store: SliceStore, info: Any, forward: np.ndarray, backward: np.ndarray, stage_of: np.ndarray,
              shift: int, stride: int) -> Optional[np.ndarray]:
    """The lane's forward and backward slices with an int micro-batch: (role, stage, mb, n, start, end),
    ``n`` counting each (role, stage, micro-batch) in time order; every ``stride``-th kept."""
    if info.spill is None:
        return None
    parts = []
    for rows in info.spill.chunks():
        picked = rows[((rows["flags"] & IS_BATCH) == 0) & ((rows["flags"] & INT_MB) != 0)]
        is_forward, is_backward = forward[picked["name"]], backward[picked["name"]]
        picked = picked[is_forward | is_backward]
        stage = stage_of[picked["rank"]]
        keep = stage >= 0
        part = np.zeros(int(keep.sum()), _SAMPLE)
        part["role"] = np.where(is_forward[is_forward | is_backward][keep], _FORWARD, _BACKWARD)
        part["stage"], part["mb"] = stage[keep], picked["microbatch"][keep]
        part["start"], part["end"] = picked["start"][keep] + shift, picked["end"][keep] + shift
        parts.append(part)
    if not parts:
        return None
    found = np.concatenate(parts)
    found = found[np.lexsort((found["start"], found["mb"], found["stage"], found["role"]))]
    first = np.r_[True, (found["role"][1:] != found["role"][:-1]) | (found["stage"][1:] != found["stage"][:-1])
                  | (found["mb"][1:] != found["mb"][:-1])]
    group_start = np.maximum.accumulate(np.where(first, np.arange(found.size), 0))
    found["n"] = np.arange(found.size) - group_start
    return found[found["n"] % stride == 0] if stride > 1 else found


_SAMPLE = np.dtype([("role", "i1"), ("stage", "<i8"), ("mb", "<i8"), ("n", "<i8"), ("start", "<i8"), ("end", "<i8")])


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
