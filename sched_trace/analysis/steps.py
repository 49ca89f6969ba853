"""Every analysed step of a report, without an object per step until one is asked for.

A trace of 30,000 steps on 8 ranks would need a quarter of a million
:class:`~sched_trace.analysis.RankStep` objects held at once; :class:`StepSeries`
keeps a few numbers per step and rank in arrays and builds a step's
:class:`~sched_trace.analysis.StepSummary` when it is read. The steps analysed in
detail (phases, order, critical path) are kept whole; the others come back with
their numbers only (``phases``, ``order``, ``busy`` and ``comm`` empty,
``critical_path`` None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Iterator, Optional, Union, overload

import numpy as np

from .model import Lane, RankStep, StepSummary


class StepSeries(Sequence):
    """A sequence of :class:`StepSummary`, one per analysed step, in trace order."""

    def __init__(self, name: str, lanes: tuple[Lane, ...], index: np.ndarray, windows: np.ndarray,
                 present: np.ndarray, busy: np.ndarray, comm: np.ndarray, attrs: list, theory: np.ndarray,
                 detailed: dict[int, StepSummary]) -> None:
        self.name, self.lanes = name, lanes
        self.index, self.windows, self.present = index, windows, present
        self.busy, self.comm, self.attrs, self.theory = busy, comm, attrs, theory
        self.detailed = detailed

    @classmethod
    def from_analysis(cls, analysis: Any, kept: Sequence[int]) -> "StepSeries":
        numbers, steps = analysis.numbers, analysis.steps
        index = np.asarray(kept, np.int64)
        theory = np.array([np.nan if (t := analysis.theory(k)) is None else t for k in kept], np.float64)
        return cls(steps.step_name or "<trace>", tuple(steps.lanes), index, numbers.windows[index].copy(),
                   numbers.present[index].copy(), numbers.busy[index].copy(), numbers.comm[index].copy(),
                   [dict(numbers.attrs[k]) for k in kept], theory,
                   {k: step for k, step in analysis.detailed.items() if k in set(kept)})

    def __len__(self) -> int:
        return int(self.index.size)

    @overload
    def __getitem__(self, position: int) -> StepSummary: ...

    @overload
    def __getitem__(self, position: slice) -> list[StepSummary]: ...

    def __getitem__(self, position: Union[int, slice]) -> Union[StepSummary, list[StepSummary]]:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"step position {position} out of range (0..{len(self) - 1})")
        k = int(self.index[position])
        found = self.detailed.get(k)
        return found if found is not None else self._compact(position)

    def __iter__(self) -> Iterator[StepSummary]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StepSeries, tuple, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"StepSeries({len(self)} steps, {len(self.detailed)} in detail)"

    def _compact(self, position: int) -> StepSummary:
        k = int(self.index[position])
        low, high = (int(v) for v in self.windows[position])
        step_ns = high - low
        ranks = []
        for lane in np.flatnonzero(self.present[position]).tolist():
            busy = int(self.busy[position, lane])
            ranks.append(RankStep(
                lane=self.lanes[lane], step=k, start_ns=low, end_ns=high, step_ns=step_ns, busy_ns=busy,
                comm_ns=int(self.comm[position, lane]), idle_ns=step_ns - busy,
                bubble_ratio=(step_ns - busy) / step_ns if step_ns else 0.0, phases=(), order=()))
        return StepSummary(index=k, name=self.name, attrs=dict(self.attrs[position]), start_ns=low, end_ns=high,
                           ranks=tuple(ranks), theory_bubble_ratio=self.theory_of(position), critical_path=None)

    # --- columns for summaries, without building steps -------------------------------------------

    def theory_of(self, position: int) -> Optional[float]:
        value = float(self.theory[position])
        return None if np.isnan(value) else value

    def labels(self) -> list[str]:
        """Each step's schedule label, as :attr:`StepSummary.label` gives it."""
        result = []
        for attrs in self.attrs:
            schedule = str(attrs.get("schedule", self.name))
            m = attrs.get("n_microbatches")
            result.append(f"{schedule} m={m}" if m is not None else schedule)
        return result

    @property
    def durations(self) -> np.ndarray:
        return self.windows[:, 1] - self.windows[:, 0]

    @property
    def step_ns_total(self) -> np.ndarray:
        """Per step: its duration times the ranks taking part."""
        return self.durations * self.present.sum(axis=1)

    @property
    def busy_total(self) -> np.ndarray:
        return np.where(self.present, self.busy, 0).sum(axis=1)

    def bubble_ratios(self) -> np.ndarray:
        """Per step: idle over step time, summed over its ranks (:attr:`StepSummary.bubble_ratio`)."""
        total = self.step_ns_total
        return np.where(total > 0, (total - self.busy_total) / np.maximum(total, 1), 0.0)

    def table(self) -> dict[str, Any]:
        """Every step's numbers, as columns (what ``report.json`` keeps of each step)."""
        return {
            "lanes": [lane.label for lane in self.lanes], "index": self.index.tolist(),
            "schedule": self.labels(), "start_ns": self.windows[:, 0].tolist(),
            "end_ns": self.windows[:, 1].tolist(), "bubble_ratio": [round(b, 6) for b in self.bubble_ratios().tolist()],
            "busy_ns": np.where(self.present, self.busy, -1).tolist(),
            "comm_ns": np.where(self.present, self.comm, -1).tolist(),
        }
