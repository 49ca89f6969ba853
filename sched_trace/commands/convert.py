"""``sched-trace convert OTLP-JSON... -o trace.perfetto-trace``: OTLP-JSON to Perfetto.

What SGLang's ``scripts/convert_otel_2_perfetto.py`` does, for any sched-trace
output: spans become slices on one track per host / thread / rank, micro-batch
flows are drawn, and the files' clocks are aligned as in ``merge``.
"""

from __future__ import annotations

import argparse

from .merge import combine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="OTLP_JSON",
                        help="OTLP-JSON files (the Collector file exporter's format) or directories")
    parser.add_argument("-o", "--output", default="trace.perfetto-trace",
                        help="the Perfetto trace to write (default: %(default)s)")
    parser.add_argument("--format", choices=("perfetto", "chrome"), default=None,
                        help="output format (default: chrome for *.json, else perfetto)")


def run(args: argparse.Namespace) -> int:
    return combine(args.files, args.output, args.format, align=True, only="otlp-json", command="convert")
