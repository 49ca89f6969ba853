"""A tiny continuous-batching engine with no tracing code in it.

The docs instrument it from the outside: ``instrument("examples.minimal.engine:Engine.run_batch", ...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Request:
    rid: str
    tokens_left: int


@dataclass
class Batch:
    reqs: list[Request] = field(default_factory=list)
    forward_mode: str = "decode"


class Engine:
    def __init__(self, pp_rank: int = 0, micro_batches: int = 2) -> None:
        self.pp_rank = pp_rank
        self.micro_batches = micro_batches
        self.waiting: list[Request] = []
        self.running: list[Request] = []

    def submit(self, rid: str, tokens: int) -> None:
        self.waiting.append(Request(rid, tokens))

    def get_next_batch_to_run(self) -> Batch:
        self.running += self.waiting
        mode = "extend" if self.waiting else "decode"
        self.waiting = []
        return Batch(list(self.running), mode)

    def run_batch(self, batch: Batch, mb_id: int) -> int:
        time.sleep(0.0005 * len(batch.reqs))  # stands in for the forward pass
        return len(batch.reqs)

    def process_batch_result(self, batch: Batch) -> None:
        for req in batch.reqs:
            req.tokens_left -= 1
        self.running = [r for r in self.running if r.tokens_left > 0]

    def step(self) -> int:
        batch = self.get_next_batch_to_run()
        if not batch.reqs:
            return 0
        size = (len(batch.reqs) + self.micro_batches - 1) // self.micro_batches
        for mb_id in range(self.micro_batches):
            part = Batch(batch.reqs[mb_id * size:(mb_id + 1) * size], batch.forward_mode)
            if part.reqs:
                self.run_batch(part, mb_id)
        self.process_batch_result(batch)
        return len(batch.reqs)

    def serve(self, steps: int) -> int:
        return sum(self.step() for _ in range(steps))


def main() -> None:
    engine = Engine()
    for i in range(6):
        engine.submit(f"req-{i}", tokens=2 + i % 3)
    print(f"served {engine.serve(6)} request-steps")


if __name__ == "__main__":
    main()
