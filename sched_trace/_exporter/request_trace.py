"""One request, many ranks: trace ids every rank derives alike, and the one rank that owns the request.

Under pipeline (or tensor) parallelism every scheduler rank sees each request's
whole life. Its trace and its root span id are derived from the run id and the
request id, so every rank process, and each one's exporter process, agrees on them
without talking: each rank hangs its own span for the request under that root, and
exactly one rank, the owner, emits the root ``request`` span with the lifecycle and
counts the request in request metrics.

The run id is ``SCHED_TRACE_RUN_ID``: ``sched-trace run`` sets it for every process
it starts; otherwise the first process that asks makes one up and puts it in its
environment, which the processes it starts inherit. Ranks started apart (one
``torchrun`` per node) must be given the same value.

The owner rule is a table of rank keys (``SCHED_TRACE_REQUEST_OWNER=pp_rank=0,tp_rank=0``,
or ``request_owner = { pp_rank = 0, tp_rank = 0 }`` in a plugin's table): a rank owns
the requests it sees when each key is unknown on it or has that value; ``any`` (or
``{}``) makes every rank own what it sees (ranks that serve different requests, as
data-parallel ones do). The default is the first pipeline stage's first tensor rank:
the SGLang scheduler that receives requests from the tokenizer and sends their
outputs to the detokenizer.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Mapping, Optional

from .._errors import ConfigError
from .._events import RankInfo
from .._rank import parse_traceparent

RUN_ID_VARIABLE = "SCHED_TRACE_RUN_ID"
OWNER_VARIABLE = "SCHED_TRACE_REQUEST_OWNER"
DEFAULT_OWNER: Mapping[str, int] = {"pp_rank": 0, "tp_rank": 0}
_RANK_FIELDS = ("tp_rank", "pp_rank", "dp_rank")


def run_id() -> str:
    """This run's id: ``SCHED_TRACE_RUN_ID``; else torchrun's ``TORCHELASTIC_RUN_ID`` (one per job);
    else made up, and put in the environment for the processes this one starts."""
    value = os.environ.get(RUN_ID_VARIABLE, "").strip()
    if not value:
        elastic = os.environ.get("TORCHELASTIC_RUN_ID", "").strip()
        value = elastic if elastic and elastic != "none" else uuid.uuid4().hex
        os.environ[RUN_ID_VARIABLE] = value
    return value


def _digest(size: int, *parts: Any) -> int:
    data = "\0".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=size).digest(), "big") or 1


def request_trace(rid: str, traceparent: Optional[str] = None, run: Optional[str] = None) -> tuple[int, int, int]:
    """``(trace_id, root_span_id, parent_span_id)`` of request ``rid``, the same in every rank process.

    A request that arrived with a W3C ``traceparent`` stays in the caller's trace, its
    root under the caller's span (``parent_span_id``); otherwise the trace id is derived
    too and the root has no parent (0).
    """
    run = run_id() if run is None else run
    parsed = parse_traceparent(traceparent) if traceparent else None
    root = _digest(8, run, rid, "root")
    if parsed is not None:
        return parsed[0], root, parsed[1]
    return _digest(16, run, rid), root, 0


def rank_span_id(rid: str, rank: RankInfo, run: Optional[str] = None) -> int:
    """The span id of one rank's (one scheduler thread's) span for request ``rid``."""
    return _digest(8, run_id() if run is None else run, rid, rank.host_id, rank.pid, rank.tid)


class RequestOwner:
    """Which rank owns a request: emits its root span and counts it in request metrics."""

    def __init__(self, rule: Optional[Mapping[str, int]] = None) -> None:
        self.rule = dict(DEFAULT_OWNER if rule is None else rule)
        self._known: dict[RankInfo, bool] = {}

    def owns(self, rank: RankInfo) -> bool:
        known = self._known.get(rank)
        if known is None:
            extras = rank.extras
            known = all((getattr(rank, key) if key in _RANK_FIELDS else extras.get(key)) in (None, value)
                        for key, value in self.rule.items())
            if len(self._known) > 4096:
                self._known.clear()
            self._known[rank] = known
        return known

    def __repr__(self) -> str:
        return f"RequestOwner({self.rule!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestOwner) and other.rule == self.rule

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.rule.items())))

    @classmethod
    def parse(cls, value: Any = None, source: str = "environment", key: str = OWNER_VARIABLE) -> "RequestOwner":
        """From a table (``{pp_rank = 0}``), a ``key=value,...`` string, or (None) ``SCHED_TRACE_REQUEST_OWNER``."""
        if value is None:
            raw = os.environ.get(OWNER_VARIABLE, "").strip()
            if not raw:
                return cls()
            value, source, key = raw, "environment", OWNER_VARIABLE
        if isinstance(value, str) and value.strip().lower() == "any":
            return cls({})
        if isinstance(value, str):
            table: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in value.split(","))):
                name, sep, number = part.partition("=")
                if not sep:
                    raise ConfigError(f"{value!r}: {part!r} is not key=value (e.g. pp_rank=0,tp_rank=0)",
                                      source=source, key=key)
                table[name.strip()] = number.strip()
            value = table
        if not isinstance(value, Mapping):
            raise ConfigError(f"{value!r} is not a table of rank keys, e.g. {{ pp_rank = 0, tp_rank = 0 }}",
                              source=source, key=key)
        rule = {}
        for name, number in value.items():
            try:
                rule[str(name)] = int(number)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} = {number!r} is not a rank number", source=source, key=key) from None
        return cls(rule)
