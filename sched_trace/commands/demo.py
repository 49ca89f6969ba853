"""``sched-trace demo [--out DIR]``: a real CPU pipeline, traced with zero source edits.

Runs ``sched_trace/_demo/pipeline.py`` (torch.distributed.pipelining, gloo, one
process per rank, GPipe then 1F1B) through the ``sched-trace run`` bootstrap
with the ``torch-pipelining`` profile, so the training script itself contains no
tracing code. Leaves per-rank Perfetto traces and one merged trace (with
sched-trace-perfetto), OTLP-JSON files (with sched-trace-otel), and the report
with its PNG, then says where they are and how to open them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ._console import escape, installed, make_console, require
from .report import REPORT_NEEDS, analyse
from .run import child_environment

DEFAULT_OUT = "sched-trace-out"
TRACE_SUFFIXES = (".perfetto-trace", ".json", ".jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="output directory (default: %(default)s)")
    parser.add_argument("--ranks", type=int, default=4, help="pipeline ranks, one process each (2-4)")
    parser.add_argument("--microbatches", type=int, default=8, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=3,
                        help="steps per schedule; the report leaves out the first of each (warm-up)")
    parser.add_argument("--schedules", default="gpipe,1f1b", help="comma-separated: gpipe, 1f1b")
    parser.add_argument("--stage-ms", type=float, default=10.0,
                        help="simulated device time of one forward (backward: twice that)")


def _arg(path: Path) -> str:
    """A path as one shell word, safe inside rich markup: printed commands run as copied."""
    return escape(shlex.quote(str(path)))


def write_config(out: Path) -> Path:
    """The run's configuration: profile, level, where each exporter writes."""
    config = out / "sched_trace.toml"
    config.write_text(
        "# Written by `sched-trace demo`.\n"
        "level = 3                       # steps, stages, and P2P post/wait\n"
        "profiles = [\"torch-pipelining\"]\n"
        "block = [\"prometheus\", \"cuda\"]  # no HTTP endpoint per rank, no GPU here\n\n"
        f"[plugins.perfetto]\ndirectory = {str(out / 'perfetto')!r}\n\n"
        f"[plugins.otel]\nexporter = \"file\"\ndirectory = {str(out / 'otel')!r}\n"
        "process = false                 # keep the demo to one process per rank\n",
        encoding="utf-8",
    )
    return config


def clear_old_traces(out: Path) -> None:
    """Remove trace files an earlier demo left in our own subdirectories (only those)."""
    for sub in ("perfetto", "otel"):
        for path in (out / sub).glob("*"):
            if path.is_file() and path.name.endswith(TRACE_SUFFIXES):
                path.unlink()


def run_pipeline(args: argparse.Namespace, config: Path, console: Any) -> int:
    pipeline = ["-m", "sched_trace._demo.pipeline", "--ranks", str(args.ranks),
                "--microbatches", str(args.microbatches), "--steps", str(args.steps),
                "--schedules", args.schedules, "--stage-ms", str(args.stage_ms)]
    env = child_environment(str(config), [], None)
    schedules = [name.strip() for name in args.schedules.split(",") if name.strip()]
    console.print(f"[bold]running[/] {args.ranks} pipeline ranks (gloo, CPU): {args.steps} steps of each of "
                  f"{', '.join(schedules)} ({args.steps * len(schedules)} in all), {args.microbatches} "
                  "micro-batches per step, traced from outside:")
    console.print(f"  sched-trace run --config {_arg(config)} -- python {escape(shlex.join(pipeline))}")
    started = time.monotonic()
    status = subprocess.run([sys.executable, *pipeline], env=env).returncode
    console.print(f"  finished in {time.monotonic() - started:.1f} s (exit status {status})")
    return status


def merge_perfetto(out: Path, console: Any) -> Optional[Path]:
    from .. import traceio
    from ..analysis.merge import merge_files

    files = traceio.expand_paths([out / "perfetto"]) if (out / "perfetto").is_dir() else []
    if not files:
        return None
    # Unaligned: the slices keep the times of the per-rank files, so reading the whole
    # output directory later counts each slice once (merge drops exact copies).
    target = out / "pipeline.perfetto-trace"
    merge_files(files, target, align=False)
    return target


DEMO_NEEDS = (("torch", "torch"),) + REPORT_NEEDS


def run(args: argparse.Namespace) -> int:
    exporters = [name for name, module in (("perfetto", "sched_trace_perfetto"), ("otel", "sched_trace_otel"))
                 if installed(module)]
    # With neither file exporter there is nothing to show: ask for the Perfetto one.
    needs = DEMO_NEEDS + (() if exporters else (("sched_trace_perfetto", "'sched-trace[perfetto]'"),))
    if not require("demo", needs):
        return 2
    console = make_console()
    out = Path(args.out).resolve()
    (out / "perfetto").mkdir(parents=True, exist_ok=True)
    clear_old_traces(out)
    if run_pipeline(args, write_config(out), console) != 0:
        print("sched-trace demo: the pipeline failed (see above)", file=sys.stderr)
        return 1
    merged = merge_perfetto(out, console) if "perfetto" in exporters else None
    source = out / ("perfetto" if merged is not None else "otel")
    analyse([str(source)], out, console)  # the report command's defaults: `report` prints the same
    _where(out, merged, exporters, source, console)
    return 0


def _where(out: Path, merged: Optional[Path], exporters: list, source: Path, console: Any) -> None:
    """What was written, and the commands that use it, each on one line to copy."""
    console.print("\n[bold]What was written[/]")
    if merged is not None:
        console.print(f"  Perfetto timeline  {escape(merged)}")
        console.print(f"                     open https://ui.perfetto.dev and drop the file in "
                      f"(per-rank files: {escape(out / 'perfetto')})")
    if "otel" in exporters:
        console.print(f"  OTLP-JSON spans    {escape(out / 'otel')}")
        console.print(f"                     sched-trace convert {_arg(out / 'otel')} -o spans.perfetto-trace")
    console.print(f"  report             {escape(out / 'report.png')}  and  {escape(out / 'report.json')}")
    console.print(f"                     again: sched-trace report {_arg(source)} --out {_arg(out)}")
    console.print(f"                     one timeline of everything: sched-trace merge {_arg(out)} "
                  "-o everything.perfetto-trace")
