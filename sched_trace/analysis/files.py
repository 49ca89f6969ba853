"""Events back from trace files (Perfetto, Chrome JSON, OTLP-JSON), via sched_trace.traceio.

:func:`load_events` gives a list of events (every slice as an object: fine for a
few hundred thousand). :func:`open_traces` reads the same files into a
:class:`TraceSet`, columns spilled to a temporary directory a chunk at a time, for
:func:`~sched_trace.analysis.pipeline_report` to analyse in bounded memory::

    with open_traces(["traces/"]) as traces:
        report = pipeline_report(traces, skip_steps=1)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from ._store import IS_BATCH, INT_MB, OBJECT_MB, SliceStore, TemporaryStore

PathLike = Union[str, "os.PathLike[str]"]


def load_events(paths: Iterable[PathLike],
                progress: Optional[Callable[[int, int], None]] = None) -> list[Any]:
    """Every event in the files (directories are searched), merged onto one timeline.

    ``progress(done, total)`` is called after each file is read, for a progress bar.
    The same run written twice (a Perfetto and an OTLP-JSON file) counts once. An
    empty file is skipped with a note; a JSON file found in a directory that is not
    a trace (``report.json``) is skipped; a file named explicitly must be a trace.
    """
    from .. import traceio  # late: reading Perfetto files imports protobuf

    paths = list(paths)
    traces = traceio.read_traces(paths, progress=progress)
    if not traces:
        raise FileNotFoundError(f"no trace files in {', '.join(os.fspath(p) for p in paths)}")
    return traceio.merge_traces(traces).events


class TraceSet:
    """Trace files read into a :class:`SliceStore` (see :func:`open_traces`); close it when done.

    ``clock_offsets`` hold what each process recorded; ``shifts`` what the analysis
    adds to each lane's times (processes of one host onto its first process's
    clock, and, once :meth:`align_hosts` ran, hosts onto one another).
    """

    def __init__(self, temporary: TemporaryStore, keep_rows: bool = True) -> None:
        from .align import HandoffLog

        self._temporary = temporary
        self.store: SliceStore = temporary.store
        self.keep_rows = keep_rows  # False: only what merge needs (counts, processes, hand-offs)
        self.handoffs = HandoffLog()
        self.files: list[str] = []
        self.formats: dict[str, str] = {}
        self.clock_offsets: dict[tuple[str, int], int] = {}
        self.duplicates = 0
        self.alignment: Any = None
        self.file_processes: dict[str, set[tuple[str, int]]] = {}
        self.first_file: dict[tuple[str, int], str] = {}  # process -> the file it was first read from
        self._digests: dict[tuple[str, int], np.ndarray] = {}

    def __enter__(self) -> "TraceSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._temporary.__exit__(None, None, None)

    @property
    def processes(self) -> list[tuple[str, int]]:
        return sorted({lane[:2] for lane in self.store.lanes} | set(self.clock_offsets))

    def process_shifts(self, align: bool = True) -> dict[tuple[str, int], int]:
        """Per process: the recorded-offset shift onto its host's first process (``merge``'s rule),
        plus the host's estimated shift when hosts were aligned."""
        from ..traceio import align_offsets

        shifts = align_offsets(self.clock_offsets) if align else {}
        hosts = self.alignment.shifts if (align and self.alignment is not None) else {}
        return {key: shifts.get(key, 0) + hosts.get(key[0], 0) for key in self.processes}

    def align_hosts(self) -> Any:
        """Estimate each host's clock shift from the pipeline's cross-host hand-offs
        (:mod:`sched_trace.analysis.align`); later analyses apply it. Returns the estimate."""
        from .align import align_hosts

        hosts = {info.index: info.key[0] for info in self.store.lanes.values()}
        self.alignment = align_hosts(self.handoffs, hosts, self.lane_shifts())
        return self.alignment

    def lane_shifts(self, align: bool = True) -> dict[int, int]:
        by_process = self.process_shifts(align)
        return {info.index: by_process.get(info.key[:2], 0) for info in self.store.lanes.values()
                if by_process.get(info.key[:2], 0)}

    def events_between(self, windows: Iterable[tuple[int, int]]) -> list[Any]:
        """Events overlapping any of the windows (times as analysed: aligned), in time order."""
        windows = list(windows)
        if not windows:
            return []
        shifts = self.lane_shifts()
        found = []
        for info in self.store.lanes.values():
            if info.spill is None:
                continue
            shift = shifts.get(info.index, 0)
            for rows in info.spill.chunks():
                start, end = rows["start"] + shift, rows["end"] + shift
                inside = np.zeros(rows.size, bool)
                for low, high in windows:
                    inside |= (start < high) & (end > low)
                if inside.any():
                    picked = rows[inside].copy()
                    picked["start"] += shift
                    picked["end"] += shift
                    found.append(picked)
        if not found:
            return []
        rows = np.concatenate(found)
        return self.store.materialize(rows[np.lexsort((rows["order"], -rows["end"], rows["start"]))])

    # --- reading -----------------------------------------------------------------------------------

    def add_file(self, scan: Any) -> None:
        """Every chunk of one file; slices of a process already read from another file that are
        the same slice (process, kind, name, times, micro-batch) are dropped."""
        self.files.append(scan.path)
        self.formats[scan.path] = scan.format
        for table in scan:
            self._add_table(scan.path, table)
        for key, offset in scan.clock_offsets.items():
            self.clock_offsets.setdefault(key, offset)
        self.file_processes[scan.path] = set(scan.processes) | self.file_processes.get(scan.path, set())

    @property
    def shared_processes(self) -> set[tuple[str, int]]:
        """Processes whose slices came from more than one file (their copies were dropped)."""
        return set(self._digests)

    def _add_table(self, path: str, table: Any) -> None:
        ranks = self.store.catalog.ranks
        process_of_rank = [(r.host_id, r.pid) for r in ranks]
        processes = {process_of_rank[i] for i in np.unique(table.rank).tolist()}
        keep = np.ones(len(table), bool)
        self.file_processes.setdefault(path, set()).update(processes)
        for process in processes:
            first = self.first_file.setdefault(process, path)
            if first == path and process not in self._digests:
                continue
            mine = np.flatnonzero(np.isin(table.rank, self._ranks_of(process)))
            digests = _slice_digests(table, mine)
            known = self._known(process)
            repeated = np.isin(digests, known)
            keep[mine[repeated]] = False
            self._digests[process] = np.union1d(known, digests[~repeated])
        dropped = int((~keep).sum())
        self.duplicates += dropped
        table = table.take(keep) if dropped else table
        if not len(table):
            return
        if self.keep_rows:
            self.store.add(table)
        else:
            self.store.count += len(table)
            self.store.note_extents(table)
        lanes = self.store._lane_ids(table.rank)
        for lane in np.unique(lanes).tolist():
            self.handoffs.add(lane, table, np.flatnonzero(lanes == lane))

    def _known(self, process: tuple[str, int]) -> np.ndarray:
        """Digests of the slices of ``process`` read so far (from the store's lanes the first time)."""
        found = self._digests.get(process)
        if found is None:
            parts = []
            if self.keep_rows:
                for info in self.store.lanes.values():
                    if info.key[:2] == process and info.spill is not None:
                        parts.extend(_row_digests(self.store, rows) for rows in info.spill.chunks())
            else:  # nothing kept: the file it came from is read again, for its slices alone
                from ..traceio import TraceScan

                path = self.first_file[process]
                for table in TraceScan(path, self.store.catalog, self.formats[path]):
                    mine = np.flatnonzero(np.isin(table.rank, self._ranks_of(process)))
                    parts.append(_slice_digests(table, mine))
            found = self._digests[process] = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        return found

    def _ranks_of(self, process: tuple[str, int]) -> list[int]:
        return [i for i, rank in enumerate(self.store.catalog.ranks) if (rank.host_id, rank.pid) == process]


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _mixed(columns: list[np.ndarray]) -> np.ndarray:
    digest = np.zeros(columns[0].size, np.uint64)
    for column in columns:
        digest = (digest ^ column.astype(np.uint64, copy=False)) * _MIX
        digest ^= digest >> np.uint64(31)
    return digest


def _slice_digests(table: Any, rows: np.ndarray) -> np.ndarray:
    """What makes a slice the same slice in two files (``event_key``), as a 64-bit digest."""
    kind = table.microbatch_kind[rows]
    microbatch = np.where(kind == 1, table.microbatch[rows], 0)
    objects = np.flatnonzero(kind == 2)
    if objects.size:
        microbatch = microbatch.copy()
        microbatch[objects] = [_text_digest(repr(table.objects[i])) for i in table.microbatch[rows][objects]]
    names = np.array([_text_digest(n) for n in table.catalog.names], np.int64)
    return _mixed([table.is_batch[rows].astype(np.int64), names[table.name[rows]], table.start_ns[rows],
                   table.end_ns[rows], kind.astype(np.int64), microbatch])


def _row_digests(store: SliceStore, rows: np.ndarray) -> np.ndarray:
    kind = np.where(rows["flags"] & INT_MB, 1, np.where(rows["flags"] & OBJECT_MB, 2, 0)).astype(np.int64)
    microbatch = np.where(kind == 1, rows["microbatch"], 0)
    objects = np.flatnonzero(kind == 2)
    if objects.size:
        microbatch[objects] = [_text_digest(repr(store.microbatches[i])) for i in rows["microbatch"][objects]]
    names = np.array([_text_digest(n) for n in store.catalog.names], np.int64)
    return _mixed([(rows["flags"] & IS_BATCH).astype(np.int64), names[rows["name"]], rows["start"], rows["end"],
                   kind, microbatch])


def _text_digest(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def open_traces(paths: Iterable[PathLike], progress: Optional[Callable[[int, int], None]] = None,
                directory: Optional[str] = None, workers: Optional[int] = None,
                allow_empty: bool = False, keep_rows: bool = True) -> TraceSet:
    """Read trace files and directories into a :class:`TraceSet` (see the module docstring).

    ``progress(done, total)`` follows the bytes read. Raises ``FileNotFoundError``
    when there is no trace file at all (unless ``allow_empty``); the temporary files go under ``directory``
    (default: the system's temporary directory). ``workers`` processes decode files
    at once (default: one per core, at most 4; large inputs only). ``keep_rows=False``
    keeps no slice for an analysis, only what a merge needs (processes, duplicates,
    the hand-offs that align hosts).
    """
    from ..traceio import Catalog
    from ..traceio._scan import scan_traces

    paths = list(paths)
    traces = TraceSet(TemporaryStore(Catalog(), ordered_by_time=True, parent=directory), keep_rows)
    try:
        workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        for scan in scan_traces(paths, traces.store.catalog, progress, workers):
            traces.add_file(scan)
    except BaseException:
        traces.close()
        raise
    if not traces.files and not allow_empty:
        traces.close()
        raise FileNotFoundError(f"no trace files in {', '.join(os.fspath(p) for p in paths)}")
    return traces
