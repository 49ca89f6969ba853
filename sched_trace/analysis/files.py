"""Events back from trace files (Perfetto, Chrome JSON, OTLP-JSON), via sched_trace.traceio."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _candidates(paths: Iterable[PathLike]) -> list[tuple[str, bool]]:
    """``(file, named)``: files given by name, then the trace-looking files under directories."""
    from .. import traceio

    found: list[tuple[str, bool]] = []
    for path in paths:
        named = not os.path.isdir(path)
        found.extend((file, named) for file in traceio.expand_paths([path]))
    return found


def load_events(paths: Iterable[PathLike],
                progress: Optional[Callable[[int, int], None]] = None) -> list[Any]:
    """Every event in the files (directories are searched), merged onto one timeline.

    ``progress(done, total)`` is called after each file is read, for a progress bar.
    The same run written twice (a Perfetto and an OTLP-JSON file) counts once. A
    JSON file found in a directory that is not a trace (``report.json``) is
    skipped; a file named explicitly must be a trace.
    """
    from .. import traceio  # late: reading Perfetto files imports protobuf

    paths = list(paths)
    files = _candidates(paths)
    if not files:
        raise FileNotFoundError(f"no trace files in {', '.join(os.fspath(p) for p in paths)}")
    traces = []
    for done, (path, named) in enumerate(files, 1):
        try:
            traces.append(traceio.read_trace(path))
        except traceio.TraceFormatError:
            if named:
                raise
        if progress is not None:
            progress(done, len(files))
    if not traces:
        raise FileNotFoundError(f"no trace files in {', '.join(os.fspath(p) for p in paths)}")
    return traceio.merge_traces(traces).events
