"""Events back from trace files (Perfetto, Chrome JSON, OTLP-JSON), via sched_trace.traceio."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Union

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
