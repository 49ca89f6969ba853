"""``sched-trace merge FILES -o OUT``: per-rank trace files into one timeline.

Reads Perfetto protobuf, Chrome JSON and OTLP-JSON files (directories are
searched), puts each process on its host's clock with the offset it recorded,
aligns hosts from the pipeline's cross-host micro-batch order (``--no-align``
keeps every recorded clock), keeps every slice exactly once, and writes Perfetto
(or Chrome JSON when OUT ends in ``.json`` or ``--format chrome``). Reads and
writes a chunk at a time (:func:`sched_trace.analysis.merge.merge_files`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .. import traceio
from ._console import make_console, notes, progress_bar


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
    from ..analysis.merge import merge_files

    console = _console()
    try:
        size = sum(os.path.getsize(p) for p in traceio.expand_paths(files))
        with notes(command), progress_bar(console, "merging", 2 * size) as update:
            result = merge_files(files, output, out_format, align=align, only=only, progress=update)
    except (OSError, ValueError, ImportError) as exc:
        print(f"sched-trace {command}: {exc}", file=sys.stderr)
        return 2
    print(result.describe())
    if result.alignment is not None and len(result.alignment.hosts) > 1:
        print(result.alignment.describe())
    return 0


def _console() -> object:
    try:
        return make_console()
    except ImportError:  # rich is the report extra's; merging needs no progress bar
        return _Plain()


class _Plain:
    is_terminal = False


def run(args: argparse.Namespace) -> int:
    return combine(args.files, args.output, args.format, args.align)
