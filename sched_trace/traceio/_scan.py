"""Trace files as streams of column chunks, whatever their format, on every core.

:class:`TraceScan` yields one file's slices as :class:`SliceTable` chunks. A
Perfetto file is read a chunk of bytes at a time (``_perfetto_scan``); Chrome JSON
and OTLP-JSON are read whole by their readers and handed on in chunks of events.
:func:`scan_traces` does it for many files and directories, skipping what
:func:`read_traces` skips, with the same notes.

With ``workers`` > 1 the files are decoded in worker processes, a file each at a
time, while this process takes them in, in file order: each worker writes its
file's tables to a temporary file (a chunk at a time, so memory stays bounded)
and this process reads them back, renumbering names and ranks into its catalog.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
import threading
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from .._errors import SchedTraceWarning
from ._columns import Catalog, SliceTable
from ._files import PROJECT_OUTPUTS, _candidates, detect_format, parse_trace
from ._model import EmptyTraceError, NotATraceError, ProcessKey
from ._perfetto_scan import PerfettoScan

PathLike = Union[str, "os.PathLike[str]"]
CHUNK_EVENTS = 1 << 16
#: Inputs smaller than this are read in this process: starting workers would cost more.
PARALLEL_BYTES = 32 << 20


class TraceScan:
    """One trace file as :class:`SliceTable` chunks; ``clock_offsets``/``processes`` once read."""

    def __init__(self, path: PathLike, catalog: Catalog, format: Optional[str] = None,
                 progress: Optional[Callable[[int], None]] = None) -> None:
        self.path = os.fspath(path)
        self.catalog = catalog
        self.format = format or detect_format(self.path)
        self.progress = progress  # called with the bytes of this file read so far
        self.clock_offsets: dict[ProcessKey, int] = {}
        self.processes: set[ProcessKey] = set()

    def __iter__(self) -> Iterator[SliceTable]:
        if self.format == "perfetto":
            scan = PerfettoScan(self.path, self.catalog)
            for table in scan:
                if self.progress is not None:
                    self.progress(scan.bytes_read)
                yield table
            self.clock_offsets, self.processes = scan.clock_offsets, scan.processes
            return
        with open(self.path, "rb") as handle:
            trace = parse_trace(self.path, handle.read(), self.format)
        self.clock_offsets, self.processes = dict(trace.clock_offsets), set(trace.processes())
        events = trace.events
        for first in range(0, len(events), CHUNK_EVENTS):
            yield SliceTable.from_events(events[first:first + CHUNK_EVENTS], self.catalog)


def scan_traces(paths: Iterable[PathLike], catalog: Catalog,
                progress: Optional[Callable[[int, int], None]] = None, workers: int = 1) -> Iterator[Any]:
    """A :class:`TraceScan` per trace file in the files and directories (empty files, and
    files in directories that are no traces, skipped with a note, as :func:`read_traces` does).

    ``progress(done, total)`` is called as bytes are read: ``done`` and ``total`` in
    bytes. ``workers`` > 1 decodes that many files at once in worker processes.
    """
    files = _candidates(paths)
    sizes = [os.path.getsize(path) for path, _ in files]
    total, done = sum(sizes), 0
    found: list[tuple[str, str, int]] = []
    for (path, named), size in zip(files, sizes):
        try:
            found.append((path, detect_format(path), size))
        except EmptyTraceError as exc:
            warnings.warn(SchedTraceWarning(f"{exc}; skipped"), stacklevel=2)
        except NotATraceError as exc:
            if named:
                raise
            if os.path.basename(path) not in PROJECT_OUTPUTS:
                warnings.warn(SchedTraceWarning(f"{exc}; skipped"), stacklevel=2)
    skipped = total - sum(size for _, _, size in found)
    workers = min(workers, len(found))
    if workers > 1 and total >= PARALLEL_BYTES:
        scans: Iterable[Any] = _parallel(found, catalog, workers)
    else:
        scans = (TraceScan(path, catalog, format) for path, format, _ in found)
    done = skipped
    for scan, (_, _, size) in zip(scans, found):
        if progress is not None:
            scan.progress = lambda read, before=done: progress(before + min(read, size), total)
        yield scan
        done += size
        if progress is not None:
            progress(done, total)


# --- decoding in worker processes -------------------------------------------------------------


class _DecodedScan:
    """A file a worker decoded: its tables read back from the worker's temporary file."""

    def __init__(self, path: str, format: str, catalog: Catalog, result: Any) -> None:
        self.path, self.format, self.catalog, self._result = path, format, catalog, result
        self.progress: Optional[Callable[[int], None]] = None
        self.clock_offsets: dict[ProcessKey, int] = {}
        self.processes: set[ProcessKey] = set()

    def __iter__(self) -> Iterator[SliceTable]:
        spool, offsets, processes, notes, error = self._result.get()
        try:
            if error is not None:
                raise error
            for note in notes:
                warnings.warn(SchedTraceWarning(note), stacklevel=3)
            with open(spool, "rb") as handle:
                while True:
                    try:
                        names, ranks, columns, objects, read = pickle.load(handle)
                    except EOFError:
                        break
                    if self.progress is not None:
                        self.progress(read)
                    yield _renumbered(self.catalog, names, ranks, columns, objects)
            self.clock_offsets, self.processes = offsets, processes
        finally:
            if spool is not None and os.path.exists(spool):
                os.remove(spool)


def _renumbered(catalog: Catalog, names: list, ranks: list, columns: dict, objects: list) -> SliceTable:
    name_ids = np.asarray([catalog.name_id(name) for name in names] or [0], np.int32)
    rank_ids = np.asarray([catalog.rank_id(rank) for rank in ranks] or [0], np.int32)
    columns["name"] = name_ids[columns["name"]]
    columns["rank"] = rank_ids[columns["rank"]]
    return SliceTable(catalog, **columns, objects=objects)


def _decode_to_spool(path: str, format: str, directory: str) -> tuple:
    """In a worker: every table of one file into a temporary file; (spool, offsets, processes, notes, error)."""
    catalog = Catalog()
    handle = tempfile.NamedTemporaryFile(dir=directory, suffix=".tables", delete=False)
    try:
        with warnings.catch_warnings(record=True) as caught, handle:
            warnings.simplefilter("always", SchedTraceWarning)
            read = [0]
            scan = TraceScan(path, catalog, format, progress=lambda done: read.__setitem__(0, done))
            for table in scan:  # names and ranks so far: a chunk refers only to those
                pickle.dump((list(catalog.names), list(catalog.ranks), table.columns(), table.objects, read[0]),
                            handle, protocol=pickle.HIGHEST_PROTOCOL)
        notes = [str(w.message) for w in caught if issubclass(w.category, SchedTraceWarning)]
        return handle.name, scan.clock_offsets, scan.processes, notes, None
    except Exception as exc:  # the reader's error goes back to be raised where it is read
        os.remove(handle.name)
        return None, {}, set(), [], exc


def _parallel(found: list[tuple[str, str, int]], catalog: Catalog, workers: int) -> Iterator[_DecodedScan]:
    directory = tempfile.mkdtemp(prefix="sched-trace-scan-")
    # fork starts in an instant; a process with threads may hold a lock a child would inherit.
    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = multiprocessing.get_context(method).Pool(workers)
    try:
        results = [pool.apply_async(_decode_to_spool, (path, format, directory)) for path, format, _ in found]
        for (path, format, _), result in zip(found, results):
            yield _DecodedScan(path, format, catalog, result)
    finally:
        pool.terminate()
        pool.join()
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))
        os.rmdir(directory)
