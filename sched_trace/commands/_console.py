"""What ``demo`` and ``report`` share: the install hint for missing extras, and the console."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import warnings
from typing import Any, Iterator, Optional, Sequence

from .._errors import SchedTraceWarning

# Wide enough that no path or command printed is ever cut in two when output is piped.
PIPED_WIDTH = 200


#: Inputs smaller than this read in a moment: no progress bar for them.
LARGE_INPUT_BYTES = 4 << 20


@contextlib.contextmanager
def progress_bar(console: Any, what: str, total_bytes: int) -> Iterator[Any]:
    """A rich progress bar over bytes (``update(done, total)``), shown only on a terminal and
    only for inputs that take more than a moment; elsewhere the update does nothing."""
    if not getattr(console, "is_terminal", False) or total_bytes < LARGE_INPUT_BYTES:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn(what), BarColumn(), DownloadColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what, total=total_bytes)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module set to None
        return False


def missing_hint(command: str, needs: Sequence[tuple[str, str]]) -> Optional[str]:
    """One line naming what to install, or None. ``needs``: (module, pip requirement) pairs."""
    missing = [(module, requirement) for module, requirement in needs if not installed(module)]
    if not missing:
        return None
    extras = sorted({r.split("[", 1)[1].rstrip("]'") for _, r in missing if r.startswith("'sched-trace[")})
    others = sorted({r for _, r in missing if not r.startswith("'sched-trace[")})
    install = ([f"'sched-trace[{','.join(extras)}]'"] if extras else []) + others
    names = ", ".join(module for module, _ in missing)
    return f"sched-trace {command} needs {names}: pip install {' '.join(install)}"


def require(command: str, needs: Sequence[tuple[str, str]]) -> bool:
    """Print the install hint and return False when something is missing."""
    hint = missing_hint(command, needs)
    if hint is not None:
        print(hint, file=sys.stderr)
    return hint is None


def make_console() -> Any:
    """A rich console that never hard-wraps: paths and commands stay copyable when piped."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(soft_wrap=True, width=PIPED_WIDTH)
    return console


def number_ranges(numbers: Sequence[int], limit: int = 8) -> str:
    """``1-3, 5, 7-9``: runs of consecutive numbers; past ``limit`` runs, the first and last few."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    text = [f"{low}" if low == high else f"{low}-{high}" for low, high in runs]
    if len(text) > limit:
        text = text[: limit - 2] + [f"... ({len(runs) - limit + 1} more runs) ..."] + text[-1:]
    return ", ".join(text)


def counted(numbers: Sequence[int], noun: str = "step") -> str:
    """``step 0`` or ``steps 0, 3`` or ``steps 1-32661``: a noun with its numbers, summarised."""
    return f"{noun}{'' if len(numbers) == 1 else 's'} {number_ranges(numbers)}"


def escape(text: Any) -> str:
    """``text`` safe to embed in rich markup (a path may contain ``[``)."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


@contextlib.contextmanager
def notes(command: str) -> Iterator[None]:
    """Print each SchedTraceWarning raised inside (a file skipped ...) as one plain line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SchedTraceWarning)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, SchedTraceWarning):
                    print(f"sched-trace {command}: note: {warning.message}", file=sys.stderr)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
