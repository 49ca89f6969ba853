"""Who is recording: per-thread rank identity, auto-detected or set explicitly.

``set_thread_info`` names the calling thread's role and ranks. Without it, a thread
is described by its name and by what the environment says: ``SCHED_TRACE_TP_RANK``
/ ``_PP_RANK`` / ``_DP_RANK``, the launcher's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``,
and ``torch.distributed`` once it is initialised (never imported from here).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import socket
import sys
import threading
from time import monotonic_ns
from typing import Any, Callable, Mapping, Optional

from . import _extract
from ._events import RankInfo

log = logging.getLogger("sched_trace")

_local = threading.local()
_UNCACHED = (None, -1)  # an epoch that never matches: take the checked path
# Bumped by refresh() and by set_thread_info() on any thread; every cached RankInfo
# (this module's per thread, and the probe's) is valid only for the epoch it was read in.
epoch = [0]
_overrides: dict[tuple[RankInfo, tuple], RankInfo] = {}


def host_id() -> str:
    """This host's id in events: ``SCHED_TRACE_HOST_ID``, else the host name."""
    return os.environ.get("SCHED_TRACE_HOST_ID") or socket.gethostname()


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        raw = os.environ.get(name)
        if raw not in (None, ""):
            try:
                return int(raw)
            except ValueError:
                continue
    return None


def _distributed_extras() -> dict[str, Any]:
    extras: dict[str, Any] = {}
    rank = _env_int("RANK")
    world = _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK")
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
    except Exception:  # a half-initialised torch must not break tracing
        pass
    if rank is not None:
        extras["rank"] = rank
    if world is not None:
        extras["world_size"] = world
    if local is not None:
        extras["local_rank"] = local
    return extras


def detect(label: Optional[str] = None, **ranks: Any) -> RankInfo:
    """Build the RankInfo for the calling thread from explicit values and the environment."""
    thread = threading.current_thread()
    extras = _distributed_extras()
    tp = ranks.pop("tp_rank", _env_int("SCHED_TRACE_TP_RANK"))
    pp = ranks.pop("pp_rank", _env_int("SCHED_TRACE_PP_RANK"))
    dp = ranks.pop("dp_rank", _env_int("SCHED_TRACE_DP_RANK"))
    extras.update(ranks)
    return RankInfo(
        host_id=host_id(),
        pid=os.getpid(),
        tid=threading.get_native_id(),
        thread_label=label or os.environ.get("SCHED_TRACE_THREAD_LABEL") or thread.name,
        tp_rank=tp,
        pp_rank=pp,
        dp_rank=dp,
        extra=tuple(sorted(extras.items())),
    )


def set_thread_info(
    thread_label: str,
    tp_rank: Optional[int] = None,
    pp_rank: Optional[int] = None,
    dp_rank: Optional[int] = None,
    **extra: Any,
) -> RankInfo:
    """Name the calling thread's role and ranks; every later event on it carries them.

    A rank left out (or None) is taken from the environment, as for a thread never named.
    """
    if not isinstance(thread_label, str) or not thread_label:
        raise ValueError(f"thread_label must be a non-empty string, got {thread_label!r}")
    ranks = {key: value for key, value in dict(tp_rank=tp_rank, pp_rank=pp_rank, dp_rank=dp_rank, **extra).items()
             if value is not None}
    info = detect(thread_label, **ranks)
    _local.explicit = (thread_label, ranks)
    epoch[0] += 1
    _remember(info)
    return info


def _awaiting_init() -> bool:
    """torch.distributed is imported but not initialised yet: ranks may still change."""
    dist = sys.modules.get("torch.distributed")
    try:
        return dist is not None and dist.is_available() and not dist.is_initialized()
    except Exception:
        return False


def current() -> RankInfo:
    """The calling thread's RankInfo (cached; refreshed after ``refresh()``).

    While torch.distributed is imported but not initialised, the cache is
    re-checked at most once a second, so ranks appear once the process group is up.
    """
    # Hot path: one thread-local read. ``fast`` holds (info, epoch) only while no
    # re-check is pending; otherwise it holds _UNCACHED and the checks below run.
    try:
        info, read_in = _local.fast
    except AttributeError:
        return _current_checked()
    if read_in == epoch[0]:
        return info
    return _current_checked()


def _current_checked() -> RankInfo:
    info = getattr(_local, "info", None)
    if info is not None and _local.epoch == epoch[0]:
        recheck = _local.recheck_at
        if recheck is None or monotonic_ns() < recheck:
            return info
    explicit = getattr(_local, "explicit", None)
    info = detect(explicit[0], **explicit[1]) if explicit else detect()
    _remember(info)
    return info


def _remember(info: RankInfo) -> None:
    _local.info = info
    _local.epoch = epoch[0]
    _local.recheck_at = monotonic_ns() + 1_000_000_000 if _awaiting_init() else None
    _local.fast = (info, _local.epoch) if _local.recheck_at is None else _UNCACHED


def clear_thread_info() -> None:
    """Forget what ``set_thread_info`` said for the calling thread (back to auto-detection)."""
    _local.__dict__.pop("explicit", None)
    refresh()


def refresh() -> None:
    """Forget cached identities (after fork, or once torch.distributed is initialised)."""
    epoch[0] += 1
    _overrides.clear()


def current_with_epoch() -> tuple[RankInfo, int]:
    """``(current(), epoch)``; the epoch is -1 while a re-check is pending (do not cache)."""
    info = current()
    return info, (epoch[0] if _local.fast is not _UNCACHED else -1)


def with_overrides(base: RankInfo, overrides: tuple[tuple[str, Any], ...]) -> RankInfo:
    """``base`` with per-call rank keys applied; cached, so the hot path allocates once."""
    key = (base, overrides)
    info = _overrides.get(key)
    if info is None:
        if len(_overrides) > 4096:  # unbounded rank values would be a leak
            _overrides.clear()
        info = _overrides[key] = base.replace(**dict(overrides))
    return info


os.register_at_fork(after_in_child=refresh)

# --- what the thread is doing: shared by the stage and request probes ---------

#: (span id, batch id, rank, sink) outside any span: no parent, no batch, the thread's own
#: rank, and events delivered at once.
ROOT: tuple = (0, None, None, None)


#: The calling thread's (or asyncio task's) context cell: ``[top, rank cache]``, where ``top``
#: is (span id, batch id, rank, sink) of the innermost running stage or batch (nested spans
#: inherit its batch id and rank; ``sink`` is None, or the list that holds the events of
#: spans inside a keep_if span until it is decided), and the rank cache is the thread's own
#: (RankInfo, epoch). A ContextVar because reading one costs a third of a threading.local
#: attribute (benchmarks/bench_instructions.py); the cell is a list, mutated in place, so a
#: span costs one read and the writes are list stores.
_cell: "contextvars.ContextVar[list]" = contextvars.ContextVar("sched_trace_context")
cell_or_none = _cell.get


def context_cell() -> list:
    """The calling thread's context cell, made on first use."""
    found = _cell.get(None)
    if found is None:
        found = [ROOT, _UNCACHED]
        _cell.set(found)
    return found

# --- kind="thread": the identity set from the program's own objects --------------


class ThreadProbe:
    """A compiled ``kind="thread"`` declaration: after each call of the wrapped function
    (``Scheduler.__init__``, say) the calling thread's label and ranks are set from its
    extractors, as :func:`set_thread_info` would; later events on the thread pay nothing."""

    __slots__ = ("name", "level", "kind", "wrapper")

    def __init__(self, name: str, level: int, function: Optional[Callable[..., Any]],
                 options: Mapping[str, Any]) -> None:
        params = _extract.Parameters(function)
        self.name, self.level, self.kind = name, level, "thread"
        label = options.get("thread_label")
        rank_keys = _extract.parse_mapping(options.get("rank"), "rank", params)

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            result = wrapped(*args, **kwargs) if kwargs else wrapped(*args)
            try:
                ranks = {key: read(instance, args, kwargs) for key, read in rank_keys}
                owner = instance if isinstance(instance, type) else type(instance)
                set_thread_info(label or (owner.__name__ if instance is not None else current().thread_label),
                                **ranks)
            except Exception as exc:  # a rank value set_thread_info refuses must not break the program
                log.warning("sched-trace: %s could not set this thread's identity: %r", name, exc)
            return result

        self.wrapper = wrapper


# --- W3C trace context -------------------------------------------------------

# Version 00 is exactly four fields; a later version may append "-..." fields (W3C: ignore them).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_MAX_TRACEPARENT = 512  # a header longer than this is no traceparent: never scanned


def parse_traceparent(value: str) -> Optional[tuple[int, int, int]]:
    """``(trace_id, parent_span_id, flags)`` from a W3C ``traceparent``, or None if invalid.

    Never raises: any other value (not a string, too long, malformed, version ``ff``,
    an all-zero id) is None.
    """
    if not isinstance(value, str) or len(value) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None or match.group(1) == "ff" or (match.group(1) == "00" and match.group(5)):
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(match.group(4), 16)


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """A W3C ``traceparent`` header value (version 00) for the given ids."""
    return f"00-{trace_id:032x}-{span_id:016x}-{1 if sampled else 0:02x}"
