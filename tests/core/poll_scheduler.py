"""A busy-polling scheduler, SGLang-shaped, that counts its own idle polls (the ground truth)."""

from __future__ import annotations

import asyncio
import time


class Request:
    def __init__(self, rid: str, tokens: int = 2) -> None:
        self.rid, self.tokens, self.output = rid, tokens, 0


class Batch:
    def __init__(self, reqs: list, mode: str, extend_num_tokens: int = 0) -> None:
        self.reqs, self.forward_mode, self.extend_num_tokens = reqs, Mode(mode), extend_num_tokens


class Mode:
    def __init__(self, name: str) -> None:
        self.name = name


class Scheduler:
    """``event_loop`` polls its inbox and queue; the counters say what really happened."""

    def __init__(self, pp_rank: int = 0, tp_rank: int = 0, dp_rank: int = 0) -> None:
        self.pp_rank, self.tp_rank, self.dp_rank = pp_rank, tp_rank, dp_rank
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.idle_polls = self.empty_receives = self.batches_run = 0
        self.call_times: list[int] = []  # time.monotonic_ns() inside each batch-returning poll
        # SGLang leaves extend_num_tokens set after a prefill: decode batches carry a stale value.
        self.last_extend_tokens = 0

    def process_input_requests(self, recv_reqs: list) -> None:
        if not recv_reqs:
            self.empty_receives += 1
        for request in recv_reqs:
            self.add_request(request)

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def get_next_batch_to_run(self):
        if self.waiting:
            new, self.waiting = self.waiting, []
            self.running += new
            self.last_extend_tokens = sum(r.tokens for r in new)
            self.call_times.append(time.monotonic_ns())
            return Batch(new, "EXTEND", self.last_extend_tokens)
        if self.running:
            self.call_times.append(time.monotonic_ns())
            return Batch(list(self.running), "DECODE", self.last_extend_tokens)
        self.idle_polls += 1
        return None

    def run_batch(self, batch: Batch) -> int:
        self.batches_run += 1
        for request in batch.reqs:
            request.output += 1
        self.running = [r for r in self.running if r.output < r.tokens]
        return len(batch.reqs)

    def event_loop(self, inbox: list) -> None:
        """One iteration per entry of ``inbox`` (a list of requests that arrive then)."""
        for arriving in inbox:
            self.process_input_requests(arriving)
            batch = self.get_next_batch_to_run()
            if batch is not None:
                self.run_batch(batch)

    def stream_batches(self, count: int):
        for index in range(count):
            yield index
        return count

    async def poll_async(self):
        await asyncio.sleep(0)
        return self.get_next_batch_to_run()

    def failing_poll(self):
        raise RuntimeError("poll failed")
