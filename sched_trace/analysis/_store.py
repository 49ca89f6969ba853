"""Slices kept for the analysis: per lane, as compact rows, on disk or in memory.

:class:`SliceStore` takes :class:`~sched_trace.traceio.SliceTable` chunks (or events)
and keeps only what the analysis reads, 72 bytes a slice: times, ids, the name, the
rank and a few flags. Each lane (one thread of one process) gets a :class:`Spill`:
rows appended to a file in a temporary directory (or to a list, for events already
in memory), read back a chunk at a time, so memory holds a chunk, never the trace.

What the windows need before any step is analysed is kept in memory as it
streams by: every batch event (one per step per rank, not one per slice), the
names, each lane's PP ranks, and the extent of the trace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from .._events import BatchEvent, StageEvent
from ..traceio._columns import INT_MICROBATCH, OBJECT_MICROBATCH, Catalog, SliceTable
from .paths import microbatch_key  # noqa: F401 (canonical micro-batch ids)

ROW = np.dtype([("start", "<i8"), ("end", "<i8"), ("order", "<i8"), ("batch_id", "<i8"), ("span_id", "<u8"),
                ("parent_id", "<u8"), ("microbatch", "<i8"), ("name", "<i4"), ("rank", "<i4"), ("attrs", "<i4"),
                ("flags", "u1"), ("pad", "V3")])
IS_BATCH, HAS_BATCH_ID, INT_MB, OBJECT_MB = 1, 2, 4, 8
CHUNK_ROWS = 1 << 18


class Spill:
    """Rows of one dtype (:data:`ROW` by default) appended in chunks, read back in chunks (a file, or memory)."""

    def __init__(self, path: Optional[str] = None, dtype: np.dtype = ROW) -> None:
        self.path = path
        self.dtype = dtype
        self.parts: list[np.ndarray] = []
        self.rows = 0
        self._handle = open(path, "wb") if path is not None else None

    def append(self, rows: np.ndarray) -> None:
        if not rows.size:
            return
        self.rows += rows.size
        if self._handle is None:
            self.parts.append(rows)
        else:
            self._handle.write(rows.tobytes())

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        if self._handle is None:
            yield from self.parts
            return
        self._handle.flush()
        with open(self.path, "rb") as handle:  # type: ignore[arg-type]
            while True:
                data = np.fromfile(handle, dtype=self.dtype, count=size)
                if not data.size:
                    return
                yield data

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass
class LaneInfo:
    """What streams by for one lane: its identity, PP ranks seen and first event."""

    key: tuple  # (host_id, pid, tid)
    index: int = 0
    first: Optional[tuple] = None  # (order key of the first event, its rank id)
    pp_ranks: Counter = field(default_factory=Counter)
    pp_first: dict = field(default_factory=dict)  # pp rank -> order key of its first event
    spill: Optional[Spill] = None


class SliceStore:
    """Every slice of a read, per lane; see the module docstring.

    ``ordered`` says how "input order" is decided: the sequence number given (events
    in memory: their list position) or, for files, time order (start, then longer
    first), as reading files used to merge them.
    """

    def __init__(self, catalog: Catalog, directory: Optional[str] = None, ordered_by_time: bool = False) -> None:
        self.catalog = catalog
        self.directory = directory
        self.ordered_by_time = ordered_by_time
        self.lanes: dict[tuple, LaneInfo] = {}
        self.batches: list[np.ndarray] = []  # batch rows, with a lane column
        self.batch_lanes: list[np.ndarray] = []
        self.attrs: list[dict] = []  # batch events' attrs, by id
        self._attrs_index: dict[str, int] = {}
        self.microbatches: list[Any] = []  # micro-batch values that are not ints, by id
        self._microbatch_index: dict[Any, int] = {}
        self.names_used: set[int] = set()
        self.stage_extent = [1 << 63, -(1 << 63)]  # min start, max end of stage slices
        self.any_extent = [1 << 63, -(1 << 63)]
        self.count = 0
        self.events: Optional[list] = None  # the events themselves, when they came from memory
        self._canonical: dict[str, int] = {}
        self._lanes_by_index: list[LaneInfo] = []
        self._lane_by_rank: list[int] = []

    # --- taking slices in ---------------------------------------------------------------------

    @classmethod
    def from_events(cls, events: Iterable[Any]) -> "SliceStore":
        """A store of events in memory (rows in memory too); ``order`` is the list position."""
        finished = [e for e in events if getattr(e, "end_ns", None) is not None and e.kind in ("stage", "batch")]
        store = cls(Catalog())
        store.events = finished
        table = SliceTable.from_events(finished, store.catalog)
        store.add(table, np.arange(len(finished), dtype=np.int64))
        return store

    def add(self, table: SliceTable, order: Optional[np.ndarray] = None) -> None:
        """One chunk of slices; ``order`` numbers them in input order (default: after the last)."""
        if not len(table):
            return
        if order is None:
            order = np.arange(self.count, self.count + len(table), dtype=np.int64)
        self.count += len(table)
        rows = self._rows(table, order)
        lane_ids = self._lane_ids(table.rank)
        is_batch = table.is_batch
        if is_batch.any():
            self.batches.append(rows[is_batch])
            self.batch_lanes.append(lane_ids[is_batch])
        self._extents(rows, is_batch)
        self.names_used.update(np.unique(table.name).tolist())
        for lane_index in np.unique(lane_ids).tolist():
            mine = lane_ids == lane_index
            lane = self._lanes_by_index[lane_index]
            self._note_first(lane, rows[mine], table.rank[mine])
            if lane.spill is None:
                path = None if self.directory is None else os.path.join(self.directory, f"lane{lane_index}.rows")
                lane.spill = Spill(path)
            lane.spill.append(rows[mine])

    def _rows(self, table: SliceTable, order: np.ndarray) -> np.ndarray:
        rows = np.zeros(len(table), ROW)
        rows["start"], rows["end"], rows["order"] = table.start_ns, table.end_ns, order
        rows["batch_id"], rows["span_id"], rows["parent_id"] = table.batch_id, table.span_id, table.parent_id
        rows["name"], rows["rank"] = table.name, table.rank
        flags = (table.is_batch * IS_BATCH | table.has_batch_id * HAS_BATCH_ID
                 | (table.microbatch_kind == INT_MICROBATCH) * INT_MB).astype(np.uint8)
        rows["microbatch"] = np.where(table.microbatch_kind == INT_MICROBATCH, table.microbatch, 0)
        objects = np.flatnonzero(table.microbatch_kind == OBJECT_MICROBATCH)
        if objects.size:
            flags[objects] |= OBJECT_MB
            rows["microbatch"][objects] = [self._microbatch_id(table.objects[i]) for i in table.microbatch[objects]]
        rows["flags"] = flags
        rows["attrs"] = -1
        batches = np.flatnonzero(table.is_batch & (table.attrs >= 0))
        if batches.size:  # a stage's attrs are not analysed; a step's name its schedule
            rows["attrs"][batches] = [self._attrs_id(table.objects[i]) for i in table.attrs[batches].tolist()]
        return rows

    def _microbatch_id(self, value: Any) -> int:
        key = (type(value).__name__, repr(value))
        found = self._microbatch_index.get(key)
        if found is None:
            found = self._microbatch_index[key] = len(self.microbatches)
            self.microbatches.append(value)
        return found

    def _attrs_id(self, attrs: dict) -> int:
        key = repr(sorted(attrs.items(), key=lambda item: item[0]))
        found = self._attrs_index.get(key)
        if found is None:
            found = self._attrs_index[key] = len(self.attrs)
            self.attrs.append(dict(attrs))
        return found

    def _lane_ids(self, rank_ids: np.ndarray) -> np.ndarray:
        """The lane (thread) of each rank id; lanes are numbered as first seen."""
        ranks, table = self.catalog.ranks, self._lane_by_rank
        while len(table) < len(ranks):
            rank = ranks[len(table)]
            key = (rank.host_id, rank.pid, rank.tid)
            lane = self.lanes.get(key)
            if lane is None:
                lane = self.lanes[key] = LaneInfo(key, index=len(self._lanes_by_index))
                self._lanes_by_index.append(lane)
            table.append(lane.index)
        return np.asarray(table, np.int64)[rank_ids]

    def _earliest(self, rows: np.ndarray) -> tuple[Any, int]:
        """(input-order key, row) of the first row in input order: the sequence number, or for
        files the time order merging them used (start, then the longer, then the sequence)."""
        if not self.ordered_by_time:
            first = int(np.argmin(rows["order"]))
            return int(rows["order"][first]), first
        candidates = np.flatnonzero(rows["start"] == rows["start"].min())
        longest = candidates[rows["end"][candidates] == rows["end"][candidates].max()]
        first = int(longest[np.argmin(rows["order"][longest])])
        return (int(rows["start"][first]), -int(rows["end"][first]), int(rows["order"][first])), first

    def _note_first(self, lane: LaneInfo, rows: np.ndarray, ranks: np.ndarray) -> None:
        """The lane's first event (its label) and, per PP rank, its count and first event (ties)."""
        key, first = self._earliest(rows)
        if lane.first is None or key < lane.first[0]:
            lane.first = (key, int(ranks[first]))
        pp_of_rank = np.array([-1 if r.pp_rank is None else r.pp_rank for r in self.catalog.ranks], np.int64)
        pp = pp_of_rank[ranks]
        for value in np.unique(pp[pp >= 0]).tolist():
            mine = pp == value
            lane.pp_ranks[value] += int(mine.sum())
            earliest, _ = self._earliest(rows[mine])
            if value not in lane.pp_first or earliest < lane.pp_first[value]:
                lane.pp_first[value] = earliest

    def note_extents(self, table: SliceTable) -> None:
        """The extent of a chunk that is not kept (a merge's first pass)."""
        rows = np.zeros(len(table), ROW)
        rows["start"], rows["end"] = table.start_ns, table.end_ns
        self._extents(rows, table.is_batch)

    def _extents(self, rows: np.ndarray, is_batch: np.ndarray) -> None:
        self.any_extent = [min(self.any_extent[0], int(rows["start"].min())),
                           max(self.any_extent[1], int(rows["end"].max()))]
        stages = rows[~is_batch]
        if stages.size:
            self.stage_extent = [min(self.stage_extent[0], int(stages["start"].min())),
                                 max(self.stage_extent[1], int(stages["end"].max()))]

    def close(self) -> None:
        for lane in self.lanes.values():
            if lane.spill is not None:
                lane.spill.close()

    # --- reading back ---------------------------------------------------------------------------

    def batch_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every batch slice (rows) and its lane index."""
        if not self.batches:
            return np.zeros(0, ROW), np.zeros(0, np.int64)
        return np.concatenate(self.batches), np.concatenate(self.batch_lanes)

    def lane(self, index: int) -> LaneInfo:
        return self._lanes_by_index[index]

    def microbatch_of(self, row: Any) -> Any:
        flags = int(row["flags"])
        if flags & INT_MB:
            return int(row["microbatch"])
        if flags & OBJECT_MB:
            return self.microbatches[int(row["microbatch"])]
        return None

    def canonical_microbatch(self, rows: np.ndarray) -> np.ndarray:
        """For rows whose micro-batch is not an int: one id per distinct :func:`microbatch_key`."""
        ids = rows["microbatch"].copy()
        objects = np.flatnonzero(rows["flags"] & OBJECT_MB)
        if objects.size:
            ids[objects] = [self._same_key(int(i)) for i in rows["microbatch"][objects]]
        return ids

    def _same_key(self, index: int) -> int:
        key = repr(microbatch_key(self.microbatches[index]))
        return self._canonical.setdefault(key, index)

    def materialize(self, rows: np.ndarray) -> list[Any]:
        """Events for the given rows: the originals when they came from memory, else rebuilt
        with what the analysis reads (names, times, ranks, ids, micro-batches, step attrs)."""
        if self.events is not None:
            return [self.events[i] for i in rows["order"].tolist()]
        names, ranks = self.catalog.names, self.catalog.ranks
        built = []
        for row in rows:
            flags = int(row["flags"])
            cls = BatchEvent if flags & IS_BATCH else StageEvent
            attrs = self.attrs[int(row["attrs"])] if row["attrs"] >= 0 else {}
            built.append(cls(names[int(row["name"])], 0, int(row["start"]), int(row["end"]), ranks[int(row["rank"])],
                             self.microbatch_of(row), int(row["batch_id"]) if flags & HAS_BATCH_ID else None, None,
                             attrs, None, int(row["span_id"]), int(row["parent_id"])))
        return built


class TemporaryStore:
    """A :class:`SliceStore` whose lane files live in a temporary directory removed on close."""

    def __init__(self, catalog: Catalog, ordered_by_time: bool = True, parent: Optional[str] = None) -> None:
        self.directory = tempfile.mkdtemp(prefix="sched-trace-report-", dir=parent)
        self.store = SliceStore(catalog, self.directory, ordered_by_time)

    def __enter__(self) -> SliceStore:
        return self.store

    def __exit__(self, *exc: Any) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


__all__ = ["ROW", "SliceStore", "Spill", "TemporaryStore"]
