"""``sched-trace run | level | check | demo | report | merge | convert``: one small module per command."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> module under sched_trace.commands with add_arguments(parser) and run(args) -> int
COMMANDS = {
    "run": "Run a program with sched-trace configured before its own code (also in children).",
    "level": "Set the level of a running program's processes from outside (those following a level file).",
    "check": "Check that every target of the profiles and config exists in the installed packages.",
    "demo": "Run a real CPU pipeline (torch gloo) instrumented with zero edits; write traces and a report.",
    "report": "Analyse trace files: per-rank busy/idle time, bubble ratio, latencies; write a PNG.",
    "merge": "Merge per-rank trace files into one timeline, aligning clocks.",
    "convert": "Convert OTLP-JSON trace files into a Perfetto trace.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sched-trace", description="Observability for batch schedulers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        module = importlib.import_module(f"sched_trace.commands.{name}")
        command = sub.add_parser(name, help=summary, description=summary)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
