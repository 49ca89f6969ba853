"""What every trace format shares: the file model, rank round-trips, stable ids.

Track uuids and flow ids are hashes of what they describe (host, pid, ranks,
batch, micro-batch, stage), never counters, so files written by different
processes agree on them without talking to each other and merge cleanly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Iterable, Mapping, Optional, Union

from .._errors import EmptyTraceError, NotATraceError, TraceFormatError  # noqa: F401 (re-exported)
from .._events import BatchEvent, RankInfo, RecordedError, StageEvent, request_ids

Event = Union[StageEvent, BatchEvent]
#: (host_id, pid): the key of one process, and of its clock offset.
ProcessKey = tuple[str, int]

RANK_FIELDS = ("host_id", "pid", "tid", "thread_label", "tp_rank", "pp_rank", "dp_rank")
#: Event fields stored as slice arguments (attrs go under ``attrs.``).
ARG_FIELDS = ("microbatch", "batch_id", "batch_size", "level", "span_id", "parent_id")
#: The slice argument that carries the rank's extra keys the track does not stand for.
RANK_KEYS_ARG = "rank_keys"


@dataclass
class TraceFile:
    """One trace file read back: its events and each process's clock offset.

    ``clock_offsets`` maps ``(host_id, pid)`` to the wall-clock minus monotonic
    offset (ns) that process recorded; every ``start_ns``/``end_ns`` in ``events``
    is that process's monotonic clock plus its offset.
    """

    path: str
    format: str  # "perfetto" | "chrome" | "otlp-json"
    events: list[Event] = field(default_factory=list)
    clock_offsets: dict[ProcessKey, int] = field(default_factory=dict)

    def processes(self) -> list[ProcessKey]:
        return sorted({(e.rank.host_id, e.rank.pid) for e in self.events} | set(self.clock_offsets))


def stable_id(*parts: Any) -> int:
    """A 63-bit id from ``parts``, identical in every process (unlike ``hash``)."""
    try:
        return _cached_id(parts)
    except TypeError:  # an unhashable part (a list micro-batch id): compute it afresh
        return _hashed_id(parts)


def _hashed_id(parts: tuple) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF) or 1


# Encoding asks for the same few track and flow ids for every event: hash them once.
_cached_id = functools.lru_cache(maxsize=65536)(_hashed_id)


def process_uuid(host_id: str, pid: int) -> int:
    return stable_id("process", host_id, pid)


def track_rank(rank: RankInfo, track_keys: AbstractSet[str] = frozenset()) -> RankInfo:
    """The rank one track stands for: host, process, thread, label, TP/PP/DP ranks.

    Extra rank keys (``stage_index``, ``rank``, ``world_size`` ...) are slice
    arguments (:func:`event_args`), so one thread stays one track whatever keys a
    call adds; only the extras named in ``track_keys`` split a thread into tracks.
    """
    if not rank.extra:
        return rank
    kept = tuple(item for item in rank.extra if item[0] in track_keys)
    return rank if len(kept) == len(rank.extra) else dataclasses.replace(rank, extra=kept)


def track_name(track: RankInfo, track_keys: AbstractSet[str] = frozenset()) -> str:
    """``host:Label-PP1-DP0-TP0``, then ``key=value`` for each per-key track asked for."""
    return track.track_name + "".join(f" {key}={value}" for key, value in track.extra if key in track_keys)


def track_uuid(rank: RankInfo, track_keys: AbstractSet[str] = frozenset()) -> int:
    track = track_rank(rank, track_keys)
    return stable_id("track", track.host_id, track.pid, track.tid, track.thread_label,
                     track.tp_rank, track.pp_rank, track.dp_rank, track.extra)


def counter_uuid(rank: RankInfo, counter: str, track_keys: AbstractSet[str] = frozenset()) -> int:
    return stable_id("counter", track_uuid(rank, track_keys), counter)


def flow_id(event: Event) -> Optional[int]:
    """The flow that follows one micro-batch through one stage kind, PP rank to PP rank.

    ``forward`` of micro-batch 3 in batch 7 has the same id on every rank, so the
    viewer draws pp0 -> pp1 -> ... in time order; ``backward`` gets its own id and
    so runs in reverse. Events without a micro-batch or a PP rank have no flow.
    """
    if event.kind != "stage" or event.microbatch is None or event.rank.pp_rank is None:
        return None
    return stable_id("flow", event.batch_id, event.microbatch, event.name)


def rank_to_dict(rank: RankInfo) -> dict[str, Any]:
    return rank.as_attributes()


def rank_from_dict(values: Mapping[str, Any]) -> RankInfo:
    """Inverse of :func:`rank_to_dict`; unknown keys become extras."""
    extras = {k: v for k, v in values.items() if k not in RANK_FIELDS}

    def optional_int(key: str) -> Optional[int]:
        value = values.get(key)
        return None if value is None else int(value)

    return RankInfo(
        host_id=str(values.get("host_id", "unknown")),
        pid=int(values.get("pid", 0)),
        tid=int(values.get("tid", 0)),
        thread_label=str(values.get("thread_label", "thread")),
        tp_rank=optional_int("tp_rank"),
        pp_rank=optional_int("pp_rank"),
        dp_rank=optional_int("dp_rank"),
        extra=tuple(sorted(extras.items())),
    )


def event_args(event: Event, track_keys: AbstractSet[str] = frozenset(),
               with_rank_keys: bool = True) -> dict[str, Any]:
    """The arguments a slice carries: ids, sizes, level, error, attrs, then the extra rank keys
    (last, so an encoder can append them pre-encoded: ``with_rank_keys=False`` leaves them out)."""
    args: dict[str, Any] = {}
    for key in ARG_FIELDS:
        value = getattr(event, key)
        if value is not None:
            args[key] = value
    if event.error is not None:
        args["error"] = _error_text(event.error)
    if event.attrs:
        args["attrs"] = {str(k): v for k, v in event.attrs.items() if v is not None}
        if "requests" in args["attrs"]:  # request objects carry prompts: only their ids are written
            args["attrs"]["requests"] = request_ids(args["attrs"]["requests"])
    if with_rank_keys and event.rank.extra:
        rank_keys = slice_rank_keys(event.rank.extra, track_keys)
        if rank_keys:
            args[RANK_KEYS_ARG] = rank_keys
    return args


_RANK_KEYS: dict[tuple, dict[str, Any]] = {}


def slice_rank_keys(extra: tuple, track_keys: AbstractSet[str]) -> dict[str, Any]:
    """The extras a slice carries, built once per rank (every event of a thread repeats them).

    The dict is shared: encoders only read it.
    """
    try:
        found = _RANK_KEYS.get((extra, track_keys))
    except TypeError:  # an unhashable extra value: build it afresh
        return {key: value for key, value in extra if key not in track_keys}
    if found is None:
        if len(_RANK_KEYS) >= 4096:
            _RANK_KEYS.clear()
        found = _RANK_KEYS[(extra, frozenset(track_keys))] = {k: v for k, v in extra if k not in track_keys}
    return found


def _error_text(error: BaseException) -> str:
    if isinstance(error, RecordedError):  # an exporter process's copy, or one read back: its type's own name
        return f"{error.type_name.rsplit('.', 1)[-1]}: {error.message}" if error.type_name else error.message
    return f"{type(error).__name__}: {error}"


def make_event(kind: str, name: str, start_ns: int, end_ns: int, rank: RankInfo,
               args: Mapping[str, Any]) -> Event:
    """Rebuild an end event from a slice and the arguments :func:`event_args` wrote."""
    cls = BatchEvent if kind == "batch" else StageEvent
    error = args.get("error")
    attrs = args.get("attrs") or {}
    rank_keys = args.get(RANK_KEYS_ARG)
    if isinstance(rank_keys, Mapping) and rank_keys:  # extras the track does not stand for
        rank = dataclasses.replace(rank, extra=tuple(sorted({**rank.extras, **rank_keys}.items())))
    return cls(
        name=name,
        level=int(args.get("level", 0)),
        start_ns=int(start_ns),
        end_ns=int(end_ns),
        rank=rank,
        microbatch=args.get("microbatch"),
        batch_id=_optional_int(args.get("batch_id")),
        batch_size=_optional_int(args.get("batch_size")),
        attrs=dict(attrs) if isinstance(attrs, Mapping) else {"value": attrs},
        error=None if error is None else RecordedError.parse(str(error)),
        span_id=int(args.get("span_id", 0)),
        parent_id=int(args.get("parent_id", 0)),
    )


def _optional_int(value: Any) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def event_key(event: Event) -> tuple:
    """What makes a slice the same slice in two files, whatever their formats."""
    return (event.rank.host_id, event.rank.pid, event.kind, event.name,
            event.start_ns, event.end_ns, repr(event.microbatch))


def counter_values(event: Event, counter_attrs: Iterable[str]) -> dict[str, float]:
    """Counter samples an event provides: batch size at top level, numeric attrs."""
    values: dict[str, float] = {}
    if event.batch_size is not None and (event.kind == "batch" or event.parent_id == 0):
        values["batch_size"] = event.batch_size
    for key in counter_attrs:
        value = event.attrs.get(key) if event.attrs else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = value
    return values
