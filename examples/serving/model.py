"""A small attention-free language model, split by layers across PP ranks.

Weights are seeded per layer, so the model (and every generated token) is the
same whatever the number of PP ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024
    hidden_size: int = 384
    intermediate_size: int = 1024
    num_layers: int = 4
    max_positions: int = 512
    seed: int = 1234


def _init(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() > 1:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
            else:
                param.zero_()


class DecoderLayer(nn.Module):
    """Pre-norm residual MLP block (the attention-free part of a transformer layer)."""

    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        _init(self, config.seed + 1 + layer_id)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.down_proj(torch.nn.functional.gelu(self.up_proj(self.norm(hidden))))


def layer_range(config: ModelConfig, pp_rank: int, pp_size: int) -> range:
    """The layers PP rank ``pp_rank`` owns (contiguous, as even as possible)."""
    per_rank, extra = divmod(config.num_layers, pp_size)
    start = pp_rank * per_rank + min(pp_rank, extra)
    return range(start, start + per_rank + (1 if pp_rank < extra else 0))


class PPStageModel(nn.Module):
    """The part of the model that one PP rank runs.

    The first rank embeds tokens; the last rank projects to the vocabulary and
    samples greedily; every rank runs its own slice of decoder layers.
    """

    def __init__(self, config: ModelConfig, pp_rank: int, pp_size: int) -> None:
        super().__init__()
        self.config = config
        self.is_first = pp_rank == 0
        self.is_last = pp_rank == pp_size - 1
        if self.is_first:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.embed_positions = nn.Embedding(config.max_positions, config.hidden_size)
            _init(self.embed_tokens, config.seed)
            _init(self.embed_positions, config.seed + 10_000)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in layer_range(config, pp_rank, pp_size))
        if self.is_last:
            self.norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            _init(self.lm_head, config.seed + 20_000)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden: "torch.Tensor | None") -> torch.Tensor:
        if self.is_first:
            positions = positions.clamp(max=self.config.max_positions - 1)
            hidden = self.embed_tokens(input_ids) + self.embed_positions(positions)
        assert hidden is not None, "a non-first PP rank needs the previous rank's hidden states"
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden

    def sample(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Greedy next token for each request from its last token's hidden state."""
        logits = self.lm_head(self.norm(hidden.index_select(0, rows)))
        return torch.argmax(logits, dim=-1)
