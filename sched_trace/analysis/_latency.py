"""Stage latency percentiles, exact, from samples kept per stage name on disk.

Each analysed stage slice leaves a sample (duration, lane, micro-batch) in its
stage's :class:`~._store.Spill`; at the end one stage's samples at a time are read
back and sorted, so memory holds the largest stage's durations (a few bytes per
slice of that stage), not every slice. The percentiles are those of
:func:`~.paths.percentile`: linear interpolation, as before.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Callable, Optional

import numpy as np

from ._store import Spill
from .model import LatencyStats
from .paths import percentile

SAMPLE = np.dtype([("duration", "<i8"), ("microbatch", "<i8"), ("lane", "<i4"), ("kind", "i1")])
NO_MB, INT_MB, OBJECT_MB = 0, 1, 2
_FILES = 64


class LatencySamples:
    """Durations of the analysed stage slices, by stage name (see the module docstring)."""

    def __init__(self, directory: Optional[str] = None) -> None:
        self.directory = directory
        self.spills: dict[int, Spill] = {}
        self.names: dict[int, set[int]] = defaultdict(set)  # spill -> stage name ids in it
        self._name_of_rows: dict[int, list[np.ndarray]] = defaultdict(list)

    def add(self, rows: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        if not rows.size:
            return
        samples = np.zeros(rows.size, SAMPLE)
        samples["duration"], samples["lane"] = columns["duration"], columns["lane"]
        samples["kind"] = np.where(columns["is_object"], OBJECT_MB, np.where(columns["is_int"], INT_MB, NO_MB))
        samples["microbatch"] = columns["microbatch"]
        names = columns["name"]
        for name in np.unique(names).tolist():
            slot = name % _FILES
            spill = self.spills.get(slot)
            if spill is None:
                path = None if self.directory is None else os.path.join(self.directory, f"latency{slot}.rows")
                spill = self.spills[slot] = Spill(path, np.dtype(SAMPLE.descr + [("name", "<i4")]))
            mine = names == name
            tagged = np.zeros(int(mine.sum()), spill.dtype)
            for field in SAMPLE.names:
                tagged[field] = samples[field][mine]
            tagged["name"] = name
            spill.append(tagged)
            self.names[slot].add(name)

    def table(self, stage_names: list[str], rank_of_lane: Callable[[int], Any],
              microbatch_of: Callable[[int, int], Any]) -> tuple[LatencyStats, ...]:
        """Percentiles per stage, per (stage, rank) and per (stage, micro-batch), in the old order.

        One stage at a time, one kind of group at a time: memory holds the durations of
        one stage, read back from its file once per kind of group.
        """
        rows: list[LatencyStats] = []
        for slot, spill in sorted(self.spills.items()):
            for name in sorted(self.names[slot]):
                stage = stage_names[name]
                everything = self._durations(spill, name, lambda samples: np.zeros(samples.size, np.int64))
                rows += [_stats(stage, "stage", None, durations) for durations in everything.values()]
                by_lane = self._durations(spill, name, lambda samples: samples["lane"].astype(np.int64))
                by_rank: dict[Any, list[np.ndarray]] = defaultdict(list)
                for lane, durations in by_lane.items():
                    by_rank[rank_of_lane(lane)].append(durations)
                rows += [_stats(stage, "rank", key, np.concatenate(parts)) for key, parts in by_rank.items()]
                del by_lane, by_rank
                by_microbatch: dict[Any, list[np.ndarray]] = defaultdict(list)
                for (kind, value), durations in self._durations(spill, name, _microbatch_key).items():
                    if kind != NO_MB:
                        by_microbatch[microbatch_of(kind, value)].append(durations)
                rows += [_stats(stage, "microbatch", key, np.concatenate(parts)) for key, parts in by_microbatch.items()]
        order = {"stage": 0, "rank": 1, "microbatch": 2}
        return tuple(sorted(rows, key=lambda r: (r.stage, order[r.by], str(type(r.key)),
                                                 r.key if r.key is not None else 0)))

    @staticmethod
    def _durations(spill: Spill, name: int, key_of: Callable[[np.ndarray], np.ndarray]) -> dict[Any, np.ndarray]:
        """The stage's durations grouped by ``key_of`` (one array per key), read chunk by chunk."""
        parts: dict[Any, list[np.ndarray]] = defaultdict(list)
        for chunk in spill.chunks():
            mine = chunk[chunk["name"] == name]
            for label, rows in _groups(key_of(mine)):
                parts[label].append(mine["duration"][rows])
        return {label: np.concatenate(arrays) for label, arrays in parts.items()}

    def close(self) -> None:
        for spill in self.spills.values():
            spill.close()
            if spill.path is not None and os.path.exists(spill.path):
                os.remove(spill.path)


def _microbatch_key(samples: np.ndarray) -> np.ndarray:
    """(kind, value) as one int per sample: kinds are 0-2, values compared within their kind."""
    return np.rec.fromarrays([samples["kind"].astype(np.int64), samples["microbatch"]])


def _groups(keys: np.ndarray, few: int = 64) -> list[tuple[Any, np.ndarray]]:
    """(key, rows) per distinct key: a handful are peeled off one by one (no sort); many are sorted."""
    found: list[tuple[Any, np.ndarray]] = []
    remaining = np.arange(keys.size)
    while remaining.size and len(found) < few:
        first = keys[remaining[0]]
        same = keys[remaining] == first
        found.append((tuple(first.tolist()) if keys.dtype.names else first.item(), remaining[same]))
        remaining = remaining[~same]
    if remaining.size:
        unique, inverse = np.unique(keys[remaining], return_inverse=True)
        order = np.argsort(inverse.reshape(-1), kind="stable")
        edges = np.searchsorted(inverse.reshape(-1)[order], np.arange(unique.size + 1))
        for index, key in enumerate(unique.tolist()):
            found.append((tuple(key) if keys.dtype.names else key, remaining[order[edges[index]:edges[index + 1]]]))
    return found


def _stats(stage: str, by: str, key: Any, durations: np.ndarray) -> LatencyStats:
    ordered = durations
    ordered.sort()
    values = _Sorted(ordered)
    return LatencyStats(stage, by, key, int(ordered.size), int(ordered.sum(dtype=np.int64)) / int(ordered.size),
                        percentile(values, 50), percentile(values, 90), percentile(values, 99), int(ordered[-1]))


class _Sorted:
    """Sorted durations as :func:`percentile` reads them: Python ints, so its arithmetic is the old one."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return int(self.values.size)

    def __getitem__(self, index: int) -> int:
        return int(self.values[index])
