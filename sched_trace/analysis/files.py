"""Events back from trace files (Perfetto, Chrome JSON, OTLP-JSON), via sched_trace.traceio."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def load_events(paths: Iterable[PathLike],
                progress: Optional[Callable[[int, int], None]] = None) -> list[Any]:
    """Every event in the files (directories are searched), merged onto one timeline.

    ``progress(done, total)`` is called after each file is read, for a progress bar.
    The same run written twice (a Perfetto and an OTLP-JSON file) counts once.
    """
    from .. import traceio  # late: reading Perfetto files imports protobuf

    files = traceio.expand_paths(paths)
    if not files:
        raise FileNotFoundError(f"no trace files in {[os.fspath(p) for p in paths]}")
    traces = []
    for done, path in enumerate(files, 1):
        traces.append(traceio.read_trace(path))
        if progress is not None:
            progress(done, len(files))
    return traceio.merge_traces(traces).events
