"""Trace snapshots: the shape of what a test emitted, in a file beside the test.

The shape is one line per nesting path and rank: how many spans, their kind and
level, and the attribute keys they carry; request events by phase (distinct requests).
Never times, ids or values, so a deterministic workload gives the same shape every run::

    pp_step x2 on PP1  [batch, level 1; keys: n_microbatches, schedule]
    pp_step > pp_forward x8 on PP1 stage_index=1  [stage, level 2; keys: bid, pp_mb_id]
    request first_token x32 on EngineCore  [request; keys: output_tokens]

``pytest --sched-trace-snapshot-update`` writes it; later runs compare and fail with
the lines that changed (``-`` recorded, ``+`` emitted now), a vanished span as ``x0``.
With ``counts=False`` the counts are left out, for workloads whose step count varies.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

from .contracts import FIELD_KEYS, Trace, natural, rank_label
from ._events import REQUEST_PHASES

UPDATE_OPTION = "--sched-trace-snapshot-update"
_LINE = re.compile(r"^(?P<path>.+?)(?: x(?P<count>\d+))? on (?P<rank>.+?)  \[(?P<meta>.*)\]$")
_SHOWN_FIELDS = ("pp_mb_id", "bid", "batch_size")  # FIELD_KEYS under the names the exporters use
_REQUEST_FIELDS = ("prompt_tokens", "output_tokens")


class SnapshotMismatch(AssertionError):
    """What a test emitted no longer has the recorded shape."""


def shape(source: Any, counts: bool = True) -> list[str]:
    """The lines of a trace's shape, in a stable order (rank, then nesting path)."""
    trace = Trace.of(source)
    groups: dict[tuple, list[Any]] = defaultdict(list)
    for event in trace.events:
        groups[(rank_label(event.rank), " > ".join(trace.path(event)), event.kind, event.level)].append(event)
    lines = []
    for (rank, path, kind, level), events in groups.items():
        keys = {k for e in events for k, v in e.attrs.items() if v is not None}
        keys |= {k for k in _SHOWN_FIELDS if any(getattr(e, FIELD_KEYS[k]) is not None for e in events)}
        raised = sum(1 for e in events if e.error is not None)
        meta = f"{kind}, level {level}" + (f", raised x{raised}" if raised else "") + _keys(keys)
        lines.append((rank, path, _line(path, len(events) if counts else None, rank, meta)))
    phases: dict[tuple, list[Any]] = defaultdict(list)
    for event in trace.requests:
        phases[(rank_label(event.rank), event.phase)].append(event)
    for (rank, phase), events in phases.items():
        keys = {k for e in events for k, v in e.attrs.items() if v is not None}
        keys |= {k for k in _REQUEST_FIELDS if any(getattr(e, k) is not None for e in events)}
        requests = len({e.request_id for e in events})
        path = f"request {phase}"
        lines.append((rank, path, _line(path, requests if counts else None, rank, "request" + _keys(keys))))
    return [line for *_, line in sorted(lines, key=lambda item: _order(item[1], item[0]))]


def _order(path: str, rank: str) -> tuple:
    """By rank, spans (by nesting path) before request phases (in lifecycle order)."""
    phase = path[len("request "):] if path.startswith("request ") else None
    if phase is None:
        return natural(rank), 0, 0, path
    return natural(rank), 1, REQUEST_PHASES.index(phase) if phase in REQUEST_PHASES else 99, path


def _keys(keys: Iterable[str]) -> str:
    return f"; keys: {', '.join(sorted(keys))}" if keys else ""


def _line(path: str, count: Optional[int], rank: str, meta: str) -> str:
    return f"{path}{'' if count is None else f' x{count}'} on {rank}  [{meta}]"


def diff(recorded: list[str], emitted: list[str]) -> list[str]:
    """``- recorded`` / ``+ emitted`` pairs for each path and rank whose line changed."""
    old, new = _by_identity(recorded), _by_identity(emitted)
    order = list(old) + [key for key in new if key not in old]
    order.sort(key=lambda key: _order(*key))
    changes = []
    for path, rank in order:
        before, after = old.get((path, rank)), new.get((path, rank))
        if before == after:
            continue
        changes.append(f"- {before if before is not None else f'{path} x0 on {rank}'}")
        changes.append(f"+ {after if after is not None else f'{path} x0 on {rank}'}")
    return changes


def _by_identity(lines: list[str]) -> dict[tuple[str, str], str]:
    found = {}
    for line in lines:
        match = _LINE.match(line)
        key = (match.group("path"), match.group("rank")) if match else (line, "")
        found[key] = line
    return found


def read(path: Path) -> list[str]:
    """A snapshot file's shape lines (comments and blank lines left out)."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


def write(path: Path, lines: list[str], test: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# sched-trace snapshot of {test}\n"
              f"# The shape of what the test emitted. Rewrite it with: pytest {UPDATE_OPTION}\n")
    path.write_text(header + "".join(f"{line}\n" for line in lines), encoding="utf-8")


def check(source: Any, path: Path, *, update: bool, test: str = "", counts: bool = True) -> Optional[str]:
    """Compare with (or, when ``update``, write) the snapshot at ``path``; raise SnapshotMismatch.
    Returns a note when the file was written."""
    trace = Trace.of(source)
    emitted = shape(trace, counts=counts)
    if update:
        if not path.exists() or read(path) != emitted:
            write(path, emitted, test)
            return f"sched-trace snapshot written: {path}"
        return None
    if not path.exists():
        raise SnapshotMismatch(f"no sched-trace snapshot at {path}: run pytest {UPDATE_OPTION} to record "
                               f"what the test emits ({trace.summary()})")
    changes = diff(read(path), emitted)
    if changes:
        body = "".join(f"\n  {line}" for line in changes)
        raise SnapshotMismatch(
            f"the trace no longer has the shape recorded in {path} (- recorded, + emitted now):{body}\n"
            f"  {trace.summary()}\n"
            f"  If the change is intended, rerun with {UPDATE_OPTION}.")
    return None


def snapshot_path(test_file: Path, test_name: str, name: Optional[str] = None) -> Path:
    """``<test dir>/__snapshots__/<test module>/<test name>[.<name>].txt``"""
    stem = re.sub(r"[^\w.-]+", "_", test_name).strip("_")
    if name:
        stem += "." + re.sub(r"[^\w.-]+", "_", name)
    return test_file.parent / "__snapshots__" / test_file.stem / f"{stem}.txt"
