"""A tiny serving engine whose requests carry a payload: prompt text and token ids.

Nothing here knows about sched-trace; the tests instrument it from outside, the
way a user would instrument vLLM or SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    """Like an engine's request: its repr shows the prompt and the token ids."""

    rid: str
    prompt: str
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    sampling: dict = field(default_factory=dict)


@dataclass
class Batch:
    reqs: list[Request]


class Engine:
    def __init__(self) -> None:
        self.waiting: list[Request] = []

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def log_prompt(self, request: Request) -> None:
        """Where a user chose to record the prompt, by naming it in an attribute."""

    def run_batch(self, batch: Batch, mb_id: int) -> list[int]:
        tokens = []
        for request in batch.reqs:
            token = 1000 + len(request.output_token_ids)
            request.output_token_ids.append(token)
            tokens.append(token)
        return tokens

    def finish(self, request: Request) -> None:
        self.waiting.remove(request)

    def step(self, microbatches: int = 2) -> None:
        batch = Batch(list(self.waiting))
        for mb_id in range(microbatches):
            self.run_batch(batch, mb_id)
