"""Code the user owns, decorated in place."""

from __future__ import annotations

import sched_trace


@sched_trace.stage("prefill", level=2, batch_size="len(reqs)")
def prefill(reqs):
    return len(reqs)


class Worker:
    pp_rank = 0

    @sched_trace.batch("decode_step", batch_size="n")
    def step(self, n):
        return [self.decode(i) for i in range(n)]

    @sched_trace.stage("decode", level=3, microbatch="mb", rank={"pp_rank": "self.pp_rank"})
    def decode(self, mb):
        return mb * 2
