"""Trace contracts: what a workload must have emitted, checked with readable failures.

::

    from sched_trace.contracts import Contract, Trace

    contract = (Contract()
        .stages("pp_forward", "pp_backward", ranks=["PP0", "PP1"])
        .nested("pp_forward", inside="pp_step")
        .microbatches("pp_forward", per="pp_step", expected=4)
        .attributes("pp_forward", "pp_mb_id"))
    contract.check(Trace.of(recorder))     # raises ContractError naming every violation

A :class:`Trace` holds finished stage and batch events and request events, from a
``MemoryRecorder``, the ``sched_trace_capture`` fixture (every process of a test),
trace files, or a list of events. Ranks are named by :func:`rank_label`: ``PP1``,
``PP0 TP1``, ``PP1 stage_index=3``; a rank selector such as ``"PP1"`` matches every
label that contains all of its words.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ._events import REQUEST_PHASES

#: Rank extras that say where a process sits in the job, not what it runs.
PROCESS_KEYS = frozenset(("rank", "world_size", "local_rank"))
#: Attribute keys a contract may name that are event fields (OpenTelemetry's names first).
FIELD_KEYS = {"pp_mb_id": "microbatch", "microbatch": "microbatch", "bid": "batch_id",
              "batch_id": "batch_id", "batch_size": "batch_size"}
LIFECYCLE = ("arrived", "queued", "scheduled", "first_token", "finished")
_SHOWN = 5  # violations of one kind listed before "and N more"


class ContractError(AssertionError):
    """A trace broke its contract; the message lists every violation."""

    def __init__(self, violations: Sequence[str], summary: str) -> None:
        self.violations = list(violations)
        lines = "".join(f"\n  - {v}" for v in self.violations)
        noun = "violation" if len(self.violations) == 1 else "violations"
        super().__init__(f"trace contract failed ({len(self.violations)} {noun}):{lines}\n  {summary}")


def rank_label(rank: Any) -> str:
    """``PP1``, ``PP0 TP1``, ``PP1 stage_index=3``; ``rank=2`` or the thread's label when no
    parallel rank is known. Process and thread ids never appear: a label is stable across runs."""
    parts = [f"{prefix}{value}" for prefix, value in
             (("PP", rank.pp_rank), ("DP", rank.dp_rank), ("TP", rank.tp_rank)) if value is not None]
    extras = dict(rank.extra)
    parts += [f"{key}={value}" for key, value in sorted(extras.items()) if key not in PROCESS_KEYS]
    if parts:
        return " ".join(parts)
    return f"rank={extras['rank']}" if "rank" in extras else rank.thread_label


def matches(selector: str, label: str) -> bool:
    """Whether a rank selector (``"PP1"``, ``"PP1 TP0"``) names this rank label."""
    return set(selector.split()) <= set(label.split())


def has_key(event: Any, key: str) -> bool:
    """Whether ``event`` carries ``key``: an attribute with a value, or a field by name."""
    field = FIELD_KEYS.get(key)
    if field is not None:
        return getattr(event, field) is not None
    return event.attrs.get(key) is not None


class Trace:
    """What a workload emitted: finished spans (stages, batches) and request events."""

    def __init__(self, events: Iterable[Any] = (), requests: Iterable[Any] = (), notes: Iterable[str] = ()) -> None:
        self.events: list[Any] = []
        self.requests: list[Any] = list(requests)
        self.notes = list(notes)
        for event in events:
            if event.kind == "request":
                self.requests.append(event)
            elif event.end_ns is not None:  # start events (MemoryRecorder(starts=True)) are not spans
                self.events.append(event)
        self.events.sort(key=lambda e: e.start_ns)
        self.requests.sort(key=lambda e: e.ts_ns)
        self._spans = {_span_key(e, e.span_id): e for e in self.events}

    @classmethod
    def of(cls, source: Any) -> "Trace":
        """A Trace from a Trace, a MemoryRecorder, the capture fixture, or events."""
        if isinstance(source, Trace):
            return source
        if hasattr(source, "trace") and callable(source.trace):
            return source.trace()
        if hasattr(source, "request_events"):  # a MemoryRecorder
            return cls(source.events, source.request_events)
        if hasattr(source, "events") and hasattr(source, "requests"):  # a Trace of a reloaded module
            return cls(source.events, source.requests, getattr(source, "notes", ()))
        return cls(source)

    @classmethod
    def from_capture(cls, directory: Any) -> "Trace":
        """What every process wrote under a ``SCHED_TRACE_CAPTURE_DIR`` (see :mod:`sched_trace.capture`)."""
        from .capture import read_directory

        events, notes = read_directory(directory)
        return cls(events, notes=notes)

    @classmethod
    def from_files(cls, paths: Iterable[Any]) -> "Trace":
        """Events read back from OTLP-JSON, Perfetto or Chrome trace files (or folders of them)."""
        from .traceio import read_events

        return cls(read_events([str(p) for p in paths]))

    def parent(self, event: Any) -> Optional[Any]:
        return self._spans.get(_span_key(event, event.parent_id)) if event.parent_id else None

    def ancestors(self, event: Any) -> Iterable[Any]:
        seen = 0
        parent = self.parent(event)
        while parent is not None and seen < 256:  # a cycle in damaged input must end
            yield parent
            parent, seen = self.parent(parent), seen + 1

    def path(self, event: Any) -> tuple[str, ...]:
        """The names from the outermost enclosing span down to ``event``'s own."""
        return tuple(reversed([event.name] + [a.name for a in self.ancestors(event)]))

    def named(self, name: str) -> list[Any]:
        return [e for e in self.events if e.name == name]

    def ranks(self) -> list[str]:
        return sorted({rank_label(e.rank) for e in self.events + self.requests}, key=natural)

    def summary(self) -> str:
        processes = {(e.rank.host_id, e.rank.pid) for e in self.events + self.requests}
        ranks = ", ".join(self.ranks()) or "none"
        notes = "".join(f"; {note}" for note in self.notes)
        return (f"captured {len(self.events)} spans and {len(self.requests)} request events "
                f"from {len(processes)} process{'es' if len(processes) != 1 else ''} (ranks: {ranks}){notes}")


def _span_key(event: Any, span_id: int) -> tuple:
    return event.rank.host_id, event.rank.pid, span_id


def natural(text: str) -> list:
    """Sort key that puts PP2 before PP10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


Check = Callable[[Trace], list[str]]


class Contract:
    """Expectations on a trace; each method adds one and returns the contract."""

    def __init__(self) -> None:
        self._checks: list[Check] = []

    @classmethod
    def from_profile(cls, profile: Any, *, level: Optional[int] = None, ranks: Optional[Sequence[str]] = None,
                     skip: Iterable[str] = ()) -> "Contract":
        """Expect what a profile declares: each stage and batch name (at or below ``level``),
        on ``ranks``, and every request's lifecycle when it declares request phases.
        ``profile``: a shipped profile's name, a configuration file or a ``Config``;
        ``skip``: names that this workload does not run (a zero-bubble-only stage)."""
        from . import config as _config

        if isinstance(profile, str) and profile in _config.available_profiles():
            profile = _config.PROFILE_DIR / f"{profile}.toml"
        cfg = profile if isinstance(profile, _config.Config) else _config.load(profile)
        names: list[str] = []
        phases: set[str] = set()
        for spec in cfg.instrument:
            options = spec.options
            if options.get("kind") == "request":
                phases.add(options["phase"])
            elif options.get("kind") == "thread":  # names the thread; records no span
                continue
            elif level is None or options.get("level", 0) <= level:
                name = options.get("stage") or spec.target.rsplit(".", 1)[-1].split("[")[0]
                if name not in names and name not in set(skip):
                    names.append(name)
        contract = cls().stages(*names, ranks=ranks)
        lifecycle = [p for p in LIFECYCLE if p in phases]
        return contract.request_phases(*lifecycle) if lifecycle else contract

    def check(self, source: Any) -> Trace:
        """Raise :class:`ContractError` listing every violation; return the trace otherwise."""
        trace = Trace.of(source)
        found = self.violations(trace)
        if found:
            raise ContractError(found, trace.summary())
        return trace

    def violations(self, source: Any) -> list[str]:
        trace = Trace.of(source)
        if not trace.events and not trace.requests:
            return ["nothing was emitted: no span and no request event (was sched-trace configured "
                    "in the processes that ran the work, at a level that records these stages?)"]
        return [violation for check in self._checks for violation in check(trace)]

    def stages(self, *names: str, ranks: Optional[Sequence[str]] = None) -> "Contract":
        """Each named stage or batch was emitted, on every rank that ``ranks`` selects
        (``["PP0", "PP1"]``); anywhere when ``ranks`` is None."""
        self._checks.append(lambda trace: [v for name in names for v in _stage_missing(trace, name, ranks)])
        return self

    def nested(self, name: str, inside: str) -> "Contract":
        """Every ``name`` span ran inside an ``inside`` span (its parent or further up)."""
        self._checks.append(lambda trace: _not_nested(trace, name, inside))
        return self

    def microbatches(self, name: str, per: str, expected: Union[int, Iterable[Any], None] = None) -> "Contract":
        """Inside each ``per`` span (a step), each rank ran ``name`` once per micro-batch:
        ``expected`` ids (an int n for 0..n-1); by default the ids seen anywhere."""
        wanted = None if expected is None else (list(range(expected)) if isinstance(expected, int) else list(expected))
        self._checks.append(lambda trace: _coverage(trace, name, per, wanted))
        return self

    def attributes(self, name: str, *keys: str) -> "Contract":
        """Every ``name`` span carries each key: an attribute with a value, or ``pp_mb_id``
        (micro-batch), ``bid`` (batch id), ``batch_size``."""
        self._checks.append(lambda trace: _keys_missing(trace, name, keys))
        return self

    def request_phases(self, *phases: str, requests: Optional[int] = None) -> "Contract":
        """Every request reported each phase (default: arrived .. finished; ``aborted`` ends a
        request as ``finished`` does), in this order on each rank that reported it;
        ``requests``: how many distinct requests there must be."""
        order = phases or LIFECYCLE
        unknown = [p for p in order if p not in REQUEST_PHASES]
        if unknown:
            raise ValueError(f"unknown request phase(s) {unknown}; phases are {', '.join(REQUEST_PHASES)}")
        self._checks.append(lambda trace: _phases(trace, order, requests))
        return self

    def require(self, check: Check) -> "Contract":
        """A check of your own: ``trace -> list of violation messages``."""
        self._checks.append(check)
        return self


# --- the checks ----------------------------------------------------------------------


def _counts(events: Iterable[Any]) -> str:
    counted = Counter(e.name for e in events)
    return ", ".join(f"{name} x{n}" for name, n in sorted(counted.items())) or "nothing"


def _stage_missing(trace: Trace, name: str, ranks: Optional[Sequence[str]]) -> list[str]:
    events = trace.named(name)
    seen = sorted({rank_label(e.rank) for e in events}, key=natural)
    if ranks is None:
        return [] if events else [f"stage {name!r} was never emitted (emitted: {_counts(trace.events)})"]
    problems = []
    for selector in ranks:
        if any(matches(selector, label) for label in seen):
            continue
        there = [e for e in trace.events if matches(selector, rank_label(e.rank))]
        where = f"{selector} emitted {_counts(there)}" if there else f"nothing at all was emitted on {selector}"
        elsewhere = f"; {name!r} seen on {', '.join(seen)}" if seen else f"; {name!r} seen on no rank"
        problems.append(f"stage {name!r} missing on {selector}: {where}{elsewhere}")
    return problems


def _not_nested(trace: Trace, name: str, inside: str) -> list[str]:
    outside: dict[str, list[Any]] = defaultdict(list)
    events = trace.named(name)
    for event in events:
        if not any(a.name == inside for a in trace.ancestors(event)):
            outside[rank_label(event.rank)].append(event)
    problems = []
    for label in sorted(outside, key=natural):
        stray = outside[label]
        parents = Counter((trace.parent(e).name if trace.parent(e) else "top level") for e in stray)
        found = ", ".join(f"{p} x{n}" for p, n in sorted(parents.items()))
        total = sum(1 for e in events if rank_label(e.rank) == label)
        problems.append(f"{len(stray)} of {total} {name!r} spans on {label} are not inside a {inside!r} "
                        f"(their parents: {found})")
    return problems


def _coverage(trace: Trace, name: str, per: str, wanted: Optional[list]) -> list[str]:
    events = trace.named(name)
    expected = wanted if wanted is not None else sorted({e.microbatch for e in events}, key=repr)
    groups: dict[tuple, Counter] = {}
    steps = defaultdict(list)
    for step in trace.named(per):
        steps[rank_label(step.rank)].append(step)
    ordinal = {id(s): (label, n + 1) for label, group in steps.items() for n, s in enumerate(group)}
    for event in events:
        step = next((a for a in trace.ancestors(event) if a.name == per), None)
        if step is not None:
            groups.setdefault((id(step), rank_label(event.rank)), Counter())[event.microbatch] += 1
    problems = []
    for label in sorted(steps, key=natural):
        for step in steps[label]:
            inside = {rank: counted for (sid, rank), counted in groups.items() if sid == id(step)}
            if not inside:
                problems.append(f"{per} {ordinal[id(step)][1]} on {label}: no {name!r} inside it "
                                f"(expected micro-batches {_ids(expected)})")
            for rank in sorted(inside, key=natural):
                wrong = _micro_batch_errors(inside[rank], expected)
                if wrong:
                    problems.append(f"{per} {ordinal[id(step)][1]} on {label}: {name!r} on {rank}: {wrong}")
    return _cap(problems)


def _micro_batch_errors(counted: Counter, expected: list) -> str:
    missing = [mb for mb in expected if counted.get(mb, 0) == 0]
    twice = [f"{mb} x{n}" for mb, n in counted.items() if n > 1 and mb in expected]
    extra = [mb for mb in counted if mb not in expected]
    parts = []
    if missing:
        parts.append(f"micro-batch {_ids(missing)} missing")
    if twice:
        parts.append(f"more than once: {', '.join(twice)}")
    if extra:
        parts.append(f"unexpected micro-batch {_ids(extra)}")
    return "; ".join(parts)


def _ids(values: Iterable[Any]) -> str:
    return ", ".join(map(str, values)) or "none"


def _keys_missing(trace: Trace, name: str, keys: Sequence[str]) -> list[str]:
    events = trace.named(name)
    if not events:
        return [f"attributes of {name!r}: no {name!r} span was emitted"]
    problems = []
    by_rank: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_rank[rank_label(event.rank)].append(event)
    for label in sorted(by_rank, key=natural):
        for key in keys:
            lacking = sum(1 for e in by_rank[label] if not has_key(e, key))
            if lacking:
                problems.append(f"{name!r} on {label} lacks {key!r} ({lacking} of {len(by_rank[label])} spans)")
    return problems


def _phases(trace: Trace, order: Sequence[str], count: Optional[int]) -> list[str]:
    seen: dict[str, dict[str, Any]] = defaultdict(dict)  # request -> phase -> first event
    per_process: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for event in trace.requests:
        phase = "finished" if event.phase == "aborted" else event.phase  # either ends the request
        seen[event.request_id].setdefault(phase, event)
        per_process[(event.request_id, event.rank.host_id, event.rank.pid)].setdefault(phase, event)
    problems = []
    if count is not None and len(seen) != count:
        problems.append(f"expected {count} requests, saw {len(seen)}")
    for request_id, phases in seen.items():
        lacking = [p for p in order if p not in phases]
        if lacking:
            had = ", ".join(phases[p].phase for p in sorted(phases, key=REQUEST_PHASES.index))
            problems.append(f"request {request_id!r}: no {', '.join(lacking)} (reported: {had})")
    for (request_id, _, _), phases in per_process.items():
        present = [p for p in order if p in phases]
        by_time = sorted(present, key=lambda p: (phases[p].ts_ns, order.index(p)))
        if by_time != present:
            rank = rank_label(next(iter(phases.values())).rank)
            problems.append(f"request {request_id!r} on {rank}: phases out of order: {' < '.join(by_time)} "
                            f"(expected {' < '.join(present)})")
    return _cap(problems)


def _cap(problems: list[str]) -> list[str]:
    if len(problems) <= _SHOWN:
        return problems
    return problems[:_SHOWN] + [f"... and {len(problems) - _SHOWN} more like these"]
