"""A scheduler-shaped module used as an instrumentation target (never edited by tests)."""

from __future__ import annotations

import asyncio


class Batch:
    def __init__(self, reqs, forward_mode="decode"):
        self.reqs = list(reqs)
        self.forward_mode = forward_mode


class Scheduler:
    pp_rank = 1
    steps = 0

    def run_batch(self, batch, mb_id=0):
        return len(batch.reqs)

    def failing_batch(self, batch):
        raise RuntimeError("scheduler bug")

    @classmethod
    def make(cls, size):
        return cls()

    @staticmethod
    def merge(left, right):
        return left + right

    async def run_async(self, batch, mb_id):
        await asyncio.sleep(0)
        return len(batch.reqs)

    def stream(self, batch):
        for req in batch.reqs:
            yield req

    async def astream(self, batch):
        for req in batch.reqs:
            yield req


class TPScheduler(Scheduler):
    """Inherits run_batch: instrumenting it here must not touch the base class."""

    tp_rank = 3


def schedule(queue, budget=8):
    return queue[:budget]
