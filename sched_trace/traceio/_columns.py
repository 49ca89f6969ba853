"""Slices as columns: numpy arrays per field, not an object per slice.

A :class:`SliceTable` holds a chunk of finished slices (stage and batch end events)
the way a trace file stores them: times, ids and sizes as int64 arrays, names and
ranks as indices into a :class:`Catalog` shared by every chunk of a read, and the
rare values that are not numbers (a string micro-batch id, attrs, an error's text)
as indices into the chunk's own ``objects`` list. A slice costs about 90 bytes here
instead of 2-3 KB as an event with its dicts.

``SliceTable.from_events`` and ``SliceTable.events`` convert both ways; the round
trip gives back equal events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from .._events import BatchEvent, NO_ATTRS, RankInfo, StageEvent
from ._model import Event, RecordedError, _error_text

#: ``microbatch_kind`` values: no micro-batch, an int in ``microbatch``, or an index into ``objects``.
NO_MICROBATCH, INT_MICROBATCH, OBJECT_MICROBATCH = 0, 1, 2
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (1 << 64) - 1


class Catalog:
    """Names and ranks interned once per read: a slice holds their indices."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ranks: list[RankInfo] = []
        self._names: dict[str, int] = {}
        self._ranks: dict[RankInfo, int] = {}

    def name_id(self, name: str) -> int:
        found = self._names.get(name)
        if found is None:
            found = self._names[name] = len(self.names)
            self.names.append(name)
        return found

    def rank_id(self, rank: RankInfo) -> int:
        try:
            found = self._ranks.get(rank)
        except TypeError:  # an unhashable extra value: a rank of its own
            self.ranks.append(rank)
            return len(self.ranks) - 1
        if found is None:
            found = self._ranks[rank] = len(self.ranks)
            self.ranks.append(rank)
        return found


COLUMNS: dict[str, Any] = {
    "start_ns": np.int64, "end_ns": np.int64, "is_batch": np.bool_, "name": np.int32, "rank": np.int32,
    "microbatch": np.int64, "microbatch_kind": np.int8, "batch_id": np.int64, "has_batch_id": np.bool_,
    "batch_size": np.int64, "has_batch_size": np.bool_, "level": np.int64, "span_id": np.uint64,
    "parent_id": np.uint64, "attrs": np.int32, "error": np.int32,
}


@dataclass
class SliceTable:
    """Finished slices as columns (see the module docstring); ``attrs``/``error`` are -1 when absent."""

    catalog: Catalog
    start_ns: np.ndarray
    end_ns: np.ndarray
    is_batch: np.ndarray
    name: np.ndarray
    rank: np.ndarray
    microbatch: np.ndarray
    microbatch_kind: np.ndarray
    batch_id: np.ndarray
    has_batch_id: np.ndarray
    batch_size: np.ndarray
    has_batch_size: np.ndarray
    level: np.ndarray
    span_id: np.ndarray
    parent_id: np.ndarray
    attrs: np.ndarray
    error: np.ndarray
    objects: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.start_ns.size)

    @classmethod
    def empty(cls, catalog: Catalog) -> "SliceTable":
        return cls(catalog, **{name: np.zeros(0, dtype) for name, dtype in COLUMNS.items()})

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COLUMNS}

    def take(self, rows: "np.ndarray | slice") -> "SliceTable":
        """The given rows (indices, a boolean mask or a slice); ``objects`` is shared."""
        return SliceTable(self.catalog, **{name: column[rows] for name, column in self.columns().items()},
                          objects=self.objects)

    @classmethod
    def concat(cls, tables: Sequence["SliceTable"], catalog: Catalog) -> "SliceTable":
        """One table of many that share ``catalog``; their object indices are renumbered."""
        if not tables:
            return cls.empty(catalog)
        objects: list = []
        parts: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
        for table in tables:
            if table.catalog is not catalog:
                raise ValueError("tables from different catalogs cannot be concatenated")
            base = len(objects)
            objects.extend(table.objects)
            for name, column in table.columns().items():
                if base and name in ("attrs", "error"):
                    column = np.where(column >= 0, column + base, column)
                elif base and name == "microbatch":
                    column = np.where(table.microbatch_kind == OBJECT_MICROBATCH, column + base, column)
                parts[name].append(column)
        return cls(catalog, **{name: np.concatenate(columns) for name, columns in parts.items()}, objects=objects)

    @classmethod
    def from_events(cls, events: Iterable[Event], catalog: Optional[Catalog] = None) -> "SliceTable":
        """Finished stage and batch events as a table (others, and unfinished ones, are skipped)."""
        catalog = catalog if catalog is not None else Catalog()
        rows: dict[str, list] = {name: [] for name in COLUMNS}
        objects: list = []
        for event in events:
            if event.end_ns is None or event.kind not in ("stage", "batch"):
                continue
            _append_event(rows, objects, catalog, event)
        return cls(catalog, **{name: np.asarray(values, dtype=COLUMNS[name]) for name, values in rows.items()},
                   objects=objects)

    def events(self, rows: Optional[Iterable[int]] = None) -> Iterator[Event]:
        """The slices as events (all rows, or the given ones), equal to the events written."""
        names, ranks, objects = self.catalog.names, self.catalog.ranks, self.objects
        columns = [c.tolist() for c in (self.start_ns, self.end_ns, self.is_batch, self.name, self.rank,
                                        self.microbatch, self.microbatch_kind, self.batch_id, self.has_batch_id,
                                        self.batch_size, self.has_batch_size, self.level, self.span_id,
                                        self.parent_id, self.attrs, self.error)]
        picked = range(len(self)) if rows is None else rows
        for i in picked:
            (start, end, is_batch, name, rank, mb, mb_kind, batch_id, has_batch_id, batch_size, has_batch_size,
             level, span_id, parent_id, attrs, error) = (column[i] for column in columns)
            microbatch = mb if mb_kind == INT_MICROBATCH else (objects[mb] if mb_kind == OBJECT_MICROBATCH else None)
            yield (BatchEvent if is_batch else StageEvent)(
                names[name], level, start, end, ranks[rank], microbatch,
                batch_id if has_batch_id else None, batch_size if has_batch_size else None,
                dict(objects[attrs]) if attrs >= 0 else {}, RecordedError.parse(objects[error]) if error >= 0 else None,
                span_id, parent_id)


def _append_event(rows: dict[str, list], objects: list, catalog: Catalog, event: Event) -> None:
    rows["start_ns"].append(event.start_ns)
    rows["end_ns"].append(event.end_ns)
    rows["is_batch"].append(event.kind == "batch")
    rows["name"].append(catalog.name_id(event.name))
    rows["rank"].append(catalog.rank_id(event.rank))
    microbatch = event.microbatch
    if microbatch is None:
        rows["microbatch"].append(0)
        rows["microbatch_kind"].append(NO_MICROBATCH)
    elif type(microbatch) is int and _INT64[0] <= microbatch <= _INT64[1]:
        rows["microbatch"].append(microbatch)
        rows["microbatch_kind"].append(INT_MICROBATCH)
    else:
        rows["microbatch"].append(len(objects))
        rows["microbatch_kind"].append(OBJECT_MICROBATCH)
        objects.append(microbatch)
    for key in ("batch_id", "batch_size"):
        value = getattr(event, key)
        rows[key].append(0 if value is None else value)
        rows[f"has_{key}"].append(value is not None)
    rows["level"].append(event.level)
    # Ids are 64 unsigned bits; a negative one (a file may say -1) keeps its two's complement.
    rows["span_id"].append((event.span_id or 0) & _UINT64)
    rows["parent_id"].append((event.parent_id or 0) & _UINT64)
    attrs = event.attrs
    if attrs:
        rows["attrs"].append(len(objects))
        objects.append(dict(attrs))
    else:
        rows["attrs"].append(-1)
    if event.error is not None:
        rows["error"].append(len(objects))
        objects.append(_error_text(event.error))
    else:
        rows["error"].append(-1)


__all__ = ["Catalog", "SliceTable", "NO_ATTRS"]
