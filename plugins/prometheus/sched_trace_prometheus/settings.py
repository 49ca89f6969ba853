"""The ``[plugins.prometheus]`` table, validated: every error names the key and value."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from sched_trace import ConfigError
from sched_trace.export import RequestOwner

NAMESPACE = "sched_trace"
#: Stage and batch latency buckets in seconds: 10 µs .. 10 s, about three per decade.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005,
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
#: Request latency buckets in seconds (TTFT, TPOT, queue, end to end): 1 ms .. 10 min.
DEFAULT_REQUEST_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 600.0,
)
#: Batch-size buckets: powers of two up to 8192 requests (or micro-batch items).
DEFAULT_BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2 ** n) for n in range(14))
#: Rank keys used as labels by default: bounded by the deployment's shape.
DEFAULT_RANK_LABELS: tuple[str, ...] = ("thread_label", "pp_rank", "tp_rank", "dp_rank")
# Labels the plugin sets itself, or that Prometheus reserves.
RESERVED_LABELS = frozenset({"stage", "batch", "error_type", "le", "quantile"})
# Per-call identities that would make one series per micro-batch, request or thread id.
UNBOUNDED_LABELS = frozenset({"tid", "microbatch", "batch_id", "span_id", "request", "requests", "rid"})
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Settings:
    """What the plugin runs with; see docs/prometheus.md for each key."""

    port: int = 0
    addr: str = "127.0.0.1"
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    batch_size_buckets: tuple[float, ...] = DEFAULT_BATCH_SIZE_BUCKETS
    request_buckets: tuple[float, ...] = DEFAULT_REQUEST_BUCKETS
    max_live_requests: int = 65536
    rank_labels: tuple[str, ...] = DEFAULT_RANK_LABELS
    max_label_sets: int = 2000
    default_registry: bool = False
    capacity: int = 65536
    scrape_flush_timeout: float = 0.25
    request_owner: Optional[Mapping[str, int]] = None  # None: SCHED_TRACE_REQUEST_OWNER, else the default


_KEYS = {
    "port": int, "addr": str, "buckets": list, "batch_size_buckets": list, "request_buckets": list,
    "rank_labels": list, "max_label_sets": int, "max_live_requests": int, "default_registry": bool, "capacity": int,
    "scrape_flush_timeout": (int, float), "request_owner": dict,
}


def parse_settings(table: Mapping[str, Any], source: str = "<dict>") -> Settings:
    """Validate the ``[plugins.prometheus]`` table into :class:`Settings`, or raise ConfigError."""
    for key, value in table.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(key, list(_KEYS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown key {key!r} = {value!r}: {hint}valid keys are {', '.join(sorted(_KEYS))}",
                source=source, key=f"plugins.prometheus.{key}",
            )
        _check_type(key, value, source)
    values = dict(table)
    if not 0 <= values.get("port", 0) <= 65535:
        _fail("port", values["port"], "must be 0 (no HTTP server) or a TCP port up to 65535", source)
    if "addr" in values and not values["addr"].strip():
        _fail("addr", values["addr"], "must be a host address such as '127.0.0.1'", source)
    for key in ("max_label_sets", "capacity", "max_live_requests"):
        if key in values and values[key] < 1:
            _fail(key, values[key], "must be a positive integer", source)
    if values.get("scrape_flush_timeout", 0) < 0:
        _fail("scrape_flush_timeout", values["scrape_flush_timeout"], "must be >= 0 seconds", source)
    for key in ("buckets", "batch_size_buckets", "request_buckets"):
        if key in values:
            values[key] = _buckets(key, values[key], source)
    if "request_owner" in values:
        values["request_owner"] = RequestOwner.parse(values["request_owner"], source,
                                                     "plugins.prometheus.request_owner").rule
    if "rank_labels" in values:
        values["rank_labels"] = _rank_labels(values["rank_labels"], source)
    return Settings(**values)


def _check_type(key: str, value: Any, source: str) -> None:
    expected = _KEYS[key]
    if isinstance(value, bool) and expected is not bool:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        names = expected.__name__ if isinstance(expected, type) else "number"
        _fail(key, value, f"is a {type(value).__name__}; expected a {names}", source)


def _buckets(key: str, value: list, source: str) -> tuple[float, ...]:
    if not value:
        _fail(key, value, "must list at least one upper bound", source)
    for bound in value:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
            _fail(key, value, f"bound {bound!r} is not a positive finite number", source)
    if any(b >= a for b, a in zip(value, value[1:])) or len(set(value)) != len(value):
        _fail(key, value, "bounds must be strictly increasing (+Inf is added for you)", source)
    return tuple(float(bound) for bound in value)


def _rank_labels(value: list, source: str) -> tuple[str, ...]:
    for name in value:
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            _fail("rank_labels", value, f"{name!r} is not a valid Prometheus label name", source)
        if name in RESERVED_LABELS:
            _fail("rank_labels", value, f"{name!r} is set by the plugin itself or reserved", source)
        if name in UNBOUNDED_LABELS:
            _fail("rank_labels", value, f"{name!r} changes per call or thread: one series each "
                  "would grow without bound", source)
    if len(set(value)) != len(value):
        _fail("rank_labels", value, "lists a label twice", source)
    return tuple(value)


def _fail(key: str, value: Any, why: str, source: str) -> None:
    raise ConfigError(f"{key} = {value!r} {why}", source=source, key=f"plugins.prometheus.{key}")
