"""Which batch scopes and requests are exported: a ratio or 1 in N, parent first."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Optional

from sched_trace.export import parse_traceparent

_MAX64 = 1 << 64


def rid_hash(rid: str, size: int = 8) -> int:
    """A stable hash of a request id: same value in every process and rank."""
    return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=size).digest(), "big")


class Sampler:
    """Decides per batch scope (per thread) and per request; an explicit parent decides first."""

    def __init__(self, batch_ratio: float = 1.0, batch_every: int = 1,
                 request_ratio: float = 1.0, request_every: int = 1) -> None:
        self.batch_bound = int(batch_ratio * _MAX64)
        self.batch_every = batch_every
        self.request_bound = int(request_ratio * _MAX64)
        self.request_every = request_every
        self._batch_count: defaultdict[int, int] = defaultdict(int)
        self.batches_dropped = 0
        self.requests_dropped = 0

    def batch(self, tid: int, trace_id: int) -> bool:
        if self.batch_every > 1:
            count = self._batch_count[tid]
            self._batch_count[tid] = count + 1
            keep = count % self.batch_every == 0
        else:
            keep = (trace_id & (_MAX64 - 1)) < self.batch_bound or self.batch_bound >= _MAX64
        if not keep:
            self.batches_dropped += 1
        return keep

    def request(self, rid: str, traceparent: Optional[str]) -> bool:
        parsed = parse_traceparent(traceparent) if traceparent else None
        if parsed is not None:
            keep = bool(parsed[2] & 1)  # the caller's decision wins, as ParentBased does
        elif self.request_every > 1:
            keep = rid_hash(rid) % self.request_every == 0
        else:
            keep = rid_hash(rid) < self.request_bound or self.request_bound >= _MAX64
        if not keep:
            self.requests_dropped += 1
        return keep
