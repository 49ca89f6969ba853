"""``sched-trace merge FILES -o OUT``: per-rank trace files into one timeline.

Reads Perfetto protobuf, Chrome JSON and OTLP-JSON files (directories are
searched), aligns each process onto its host's clock with the offset it
recorded, keeps every slice exactly once, and writes Perfetto (or Chrome JSON
when OUT ends in ``.json`` or ``--format chrome``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import traceio
from ._console import notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="trace files or directories (Perfetto, Chrome JSON, OTLP-JSON)")
    parser.add_argument("-o", "--output", default="sched-trace-merged.perfetto-trace",
                        help="the merged trace (default: %(default)s)")
    parser.add_argument("--format", choices=("perfetto", "chrome"), default=None,
                        help="output format (default: chrome for *.json, else perfetto)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="keep each file's wall-clock timestamps as recorded")


def combine(files: Sequence[str], output: str, out_format: Optional[str], align: bool,
            only: Optional[str] = None, command: str = "merge") -> int:
    """Read, merge and write; shared with ``convert``. Returns the exit status.

    Nothing is written unless there is at least one event to write.
    """
    try:
        with notes(command):
            traces = traceio.read_traces(files)
        for trace in traces:
            if only is not None and trace.format != only:
                raise traceio.TraceFormatError(f"{trace.path}: is {trace.format}, expected {only}")
        merged = traceio.merge_traces(traces, align=align)
        if not merged.events:
            raise traceio.TraceFormatError(f"no events in {', '.join(files)}; nothing written")
        written = traceio.write_trace(merged.events, output, out_format, merged.clock_offsets)
    except (OSError, ValueError, ImportError) as exc:
        print(f"sched-trace {command}: {exc}", file=sys.stderr)
        return 2
    processes = len({(e.rank.host_id, e.rank.pid) for e in merged.events})
    print(f"{written} slices from {len(traces)} files ({processes} processes, "
          f"{merged.duplicates} duplicates dropped) -> {output}")
    return 0


def run(args: argparse.Namespace) -> int:
    return combine(args.files, args.output, args.format, args.align)
