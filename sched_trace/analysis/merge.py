"""Many trace files into one timeline, in bounded memory: ``sched-trace merge`` and ``convert``.

Two passes over the input. The first reads every file into a :class:`TraceSet`
(columns, spilled a chunk at a time), which finds the duplicates (the same slice
in two files) and, with ``align``, each host's clock shift from the pipeline's
cross-host hand-offs (:mod:`~sched_trace.analysis.align`). The second writes as
it reads: a Perfetto file whose processes no other file repeats is copied packet
by packet with its timestamps moved (``traceio._passthrough``); any other file is
read a chunk of events at a time and encoded again, copies dropped.

The output records the clocks: each process descriptor (Perfetto) or the header
(Chrome JSON) holds the offset that now holds for the written times, and the
host's alignment (shift and uncertainty) when one was estimated. Nothing is
written when reading fails: the output appears only when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from ..traceio import ChromeWriter, PerfettoEncoder, TraceFormatError, TraceScan, stable_id
from ..traceio._passthrough import PassThrough, ProcessIds
from .align import Alignment
from .files import TraceSet, _slice_digests, open_traces

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_files` wrote."""

    output: str
    format: str
    slices: int
    files: int
    processes: int
    duplicates: int
    alignment: Optional[Alignment]

    def describe(self) -> str:
        return (f"{self.slices} slices from {self.files} files ({self.processes} processes, "
                f"{self.duplicates} duplicates dropped) -> {self.output}")


def merge_files(paths: Iterable[PathLike], output: PathLike, format: Optional[str] = None, *, align: bool = True,
                only: Optional[str] = None, progress: Optional[Callable[[int, int], None]] = None,
                directory: Optional[str] = None) -> MergeResult:
    """Merge trace files and directories into ``output`` (see the module docstring).

    ``format`` is ``perfetto`` or ``chrome`` (default: chrome for ``*.json``);
    ``only`` refuses inputs of any other format; ``align=False`` keeps every file's
    wall-clock times as recorded. ``progress(done, total)`` follows the bytes read,
    over both passes.
    """
    output = os.fspath(output)
    format = format or ("chrome" if output.endswith(".json") else "perfetto")
    if format not in ("perfetto", "chrome"):
        raise ValueError(f"cannot write {format!r}; use 'perfetto' or 'chrome'")
    paths = list(paths)
    twice = _Twice(progress)
    with open_traces(paths, progress=twice.first, directory=directory, allow_empty=True, keep_rows=False) as traces:
        for path in traces.files:
            if only is not None and traces.formats[path] != only:
                raise TraceFormatError(f"{path}: is {traces.formats[path]}, expected {only}")
        if not traces.store.count:
            raise TraceFormatError(f"no events in {', '.join(os.fspath(p) for p in paths)}; nothing written")
        alignment = traces.align_hosts() if align else None
        partial = output + ".partial"
        try:
            with open(partial, "w" if format == "chrome" else "wb", **({"encoding": "utf-8"} if format == "chrome"
                                                                         else {})) as handle:
                _Writer(traces, handle, format, align, alignment, twice.second).write()
            os.replace(partial, output)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return MergeResult(output, format, traces.store.count, len(traces.files),
                           len({lane[:2] for lane in traces.store.lanes}), traces.duplicates, alignment)


class _Twice:
    """Progress over two passes of the same bytes."""

    def __init__(self, progress: Optional[Callable[[int, int], None]]) -> None:
        self.progress = progress
        self.total = 0

    def first(self, done: int, total: int) -> None:
        self.total = total
        if self.progress is not None:
            self.progress(done, 2 * total)

    def second(self, done: int) -> None:
        if self.progress is not None:
            self.progress(self.total + done, 2 * self.total)


class _Writer:
    def __init__(self, traces: TraceSet, handle: Any, format: str, align: bool, alignment: Optional[Alignment],
                 progress: Callable[[int], None]) -> None:
        self.traces, self.handle, self.format, self.progress = traces, handle, format, progress
        self.shifts = traces.process_shifts() if align else {}
        self.offsets = {key: offset + self.shifts.get(key, 0) for key, offset in traces.clock_offsets.items()}
        self.host_notes = {h.host: {"shift_ns": h.shift_ns, "uncertainty_ns": h.uncertainty_ns,
                                    "reference": h.reference, "note": h.note}
                           for h in (alignment.hosts if alignment is not None and len(alignment.hosts) > 1 else ())}
        self.shared = traces.shared_processes
        self.seen = {key: np.zeros(0, np.uint64) for key in self.shared}
        self.done = 0

    def write(self) -> None:
        if self.format == "chrome":
            writer = ChromeWriter(self.handle, rank=None, world_size=None, clock_offsets=self.offsets,
                                  clock_alignment=self.host_notes)
            for path in self.traces.files:
                for events in self._events(path):
                    writer.write(events)
            writer.close()
            return
        pids = ProcessIds()
        copier = PassThrough(self.handle, self.shifts, self.offsets, pids, self.host_notes)
        encoder = PerfettoEncoder(sequence_id=stable_id("merged") & 0x7FFF_FFFF)
        encoder.clock_offsets, encoder.process_notes = dict(self.offsets), self.host_notes
        encoder._pids = pids.assigned  # one pid per process across copied and encoded packets
        encoder._described = copier.described
        if len(self.offsets) == 1:
            (offset,) = self.offsets.values()
            first = self.traces.store.any_extent[0] + next(iter(self.shifts.values()), 0)
            if first >= offset >= 0:  # a clock snapshot holds unsigned times
                self.handle.write(encoder.clock_snapshot(offset, first))
        for path in self.traces.files:
            processes = self.traces.file_processes.get(path, set())
            if self.traces.formats[path] == "perfetto" and not (processes & self.shared):
                copier.copy(path, lambda done, start=self.done: self.progress(start + done))
            else:
                for events in self._events(path):
                    self.handle.write(encoder.encode(events))
            self.done += os.path.getsize(path)
            self.progress(self.done)

    def _events(self, path: str) -> Iterator[list]:
        """A file's events a chunk at a time: copies of earlier files' slices dropped, clocks moved."""
        scan = TraceScan(path, self.traces.store.catalog, self.traces.formats[path])
        for table in scan:
            keep = np.ones(len(table), bool)
            ranks = table.catalog.ranks
            for process in self.shared:
                mine = np.flatnonzero(np.isin(table.rank, [i for i, r in enumerate(ranks) if (r.host_id, r.pid) == process]))
                if not mine.size:
                    continue
                digests = _slice_digests(table, mine)
                if self.traces.first_file[process] != path:  # as the first pass decided: its first file wins
                    fresh = ~np.isin(digests, self.seen[process])
                    keep[mine[~fresh]] = False
                    digests = digests[fresh]
                self.seen[process] = np.union1d(self.seen[process], digests)
            events = list(table.events(None if keep.all() else np.flatnonzero(keep).tolist()))
            if self.shifts:
                events = [_moved(e, self.shifts.get((e.rank.host_id, e.rank.pid), 0)) for e in events]
            yield events


def _moved(event: Any, shift: int) -> Any:
    return event if not shift else event._replace(start_ns=event.start_ns + shift, end_ns=event.end_ns + shift)
