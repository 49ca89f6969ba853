"""Requests and batches, shaped like SGLang's ``Req`` and ``ScheduleBatch``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

import torch


class ForwardMode(enum.Enum):
    EXTEND = "prefill"  # every prompt token of newly admitted requests
    DECODE = "decode"  # one new token for each running request


@dataclass
class Req:
    """One generation request. Crosses process boundaries by pickling (queues, PP ranks).

    ``traceparent`` is the W3C trace context the client sent with the request, as
    an HTTP front end would copy it from the ``traceparent`` header.
    """

    rid: str
    input_ids: list[int]
    max_new_tokens: int
    traceparent: Optional[str] = None
    output_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return len(self.output_ids) >= self.max_new_tokens

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)


@dataclass
class GenerationBatchResult:
    """What ``run_batch`` returns: hidden states for the next rank, or sampled tokens."""

    pp_hidden_states: Optional[torch.Tensor] = None
    next_token_ids: Optional[torch.Tensor] = None


class ScheduleBatch:
    """The requests that run together in one forward pass on every PP rank.

    ``reqs`` is replaced, never mutated in place, so a reference taken while a
    batch runs keeps naming the requests that ran.
    """

    def __init__(self, reqs: list[Req], forward_mode: ForwardMode, mb_id: int = 0) -> None:
        self.reqs = list(reqs)
        self.forward_mode = forward_mode
        self.mb_id = mb_id

    def __repr__(self) -> str:
        return f"ScheduleBatch({self.forward_mode.value}, mb_id={self.mb_id}, reqs={len(self.reqs)})"

    def is_empty(self) -> bool:
        return not self.reqs

    def batch_size(self) -> int:
        return len(self.reqs)

    def num_tokens(self) -> int:
        if self.forward_mode is ForwardMode.EXTEND:
            return sum(len(req.input_ids) for req in self.reqs)
        return len(self.reqs)

    def filter_batch(self) -> None:
        """Drop finished requests (after their last token was processed)."""
        self.reqs = [req for req in self.reqs if not req.finished]

    def merge_batch(self, other: "ScheduleBatch") -> None:
        self.reqs = self.reqs + other.reqs

    def input_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, positions) of the tokens this batch feeds the model."""
        if self.forward_mode is ForwardMode.EXTEND:
            ids = [tok for req in self.reqs for tok in req.input_ids]
            pos = [p for req in self.reqs for p in range(len(req.input_ids))]
        else:
            ids = [(req.output_ids or req.input_ids)[-1] for req in self.reqs]
            pos = [req.seq_len - 1 for req in self.reqs]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long)

    def last_token_index(self) -> torch.Tensor:
        """Row of each request's last token in the flattened batch (its logits sample)."""
        if self.forward_mode is ForwardMode.DECODE:
            return torch.arange(len(self.reqs))
        lengths = torch.tensor([len(req.input_ids) for req in self.reqs])
        return torch.cumsum(lengths, 0) - 1
