"""Run the suite, print the table, write docs/performance.md."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from . import MODULES
from .harness import machine
from .report import fmt, met_text, write_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def run_module(name: str, quick: bool) -> tuple[list[dict[str, Any]], Optional[str], float]:
    """Rows of ``benchmarks.bench_<name>``; a failure is returned as text, never raised."""
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"benchmarks.bench_{name}":
            return [], "not present", 0.0
        return [], f"import failed: {exc!r}", 0.0
    except Exception as exc:
        return [], f"import failed: {exc!r}", 0.0
    try:
        rows = list(module.run(quick))
    except Exception:
        return [], "failed:\n" + traceback.format_exc(limit=6), time.perf_counter() - started
    finally:
        _reset()
    return rows, None, time.perf_counter() - started


def _reset() -> None:
    """Leave no plugin or instrumentation behind for the next module."""
    try:
        from . import workload

        workload.reset()
    except Exception:
        pass


def print_table(results: list[tuple[str, dict[str, Any]]]) -> None:
    for module, result in results:
        unit = result.get("unit", "")
        ratio = result.get("ratio")
        print(f"{module:9} {result['figure'][:70]:70} {fmt(result.get('value'), unit):>16} "
              f"{fmt(result.get('baseline'), unit):>16} {(fmt(ratio) + 'x') if ratio is not None else '-':>8} "
              f"{met_text(result)}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about a minute)")
    parser.add_argument("--only", action="append", choices=MODULES, metavar="NAME",
                        help=f"run only this module (repeatable): {', '.join(MODULES)}")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown file to write (default: {DOC} for a full run; "
                             "a --quick or --only run writes nothing unless given one)")
    args = parser.parse_args(argv)
    if args.output is None and not (args.quick or args.only):
        args.output = DOC  # only a full run may replace the published figures
    described = machine()
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + "".join(
        f" --only {name}" for name in args.only or ())
    results: list[tuple[str, dict[str, Any]]] = []
    problems: list[tuple[str, str]] = []
    durations: dict[str, float] = {}
    for name in args.only or MODULES:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        rows, problem, seconds = run_module(name, args.quick)
        durations[name] = seconds
        if problem is not None:
            problems.append((name, problem))
            print(f"# {name}: {problem}", file=sys.stderr, flush=True)
        for result in rows:
            results.append((name, result))
    print_table(results)
    if args.output is not None:
        write_markdown(args.output, results, problems, described, command, durations)
        print(f"# wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
