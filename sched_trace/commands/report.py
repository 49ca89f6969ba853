"""`sched-trace report` (being built; see the timeline issue)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("sched-trace report is not available yet")
