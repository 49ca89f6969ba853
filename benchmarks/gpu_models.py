"""The models benchmarks/gpu_check.py runs: plain torch, random weights, no download.

A :class:`Workload` is what a scheduler's step launches: ``step(index)`` runs one
forward (eagerly, or as a CUDA graph replay), ``step_layers(index, run_block)``
runs the same forward calling ``run_block(block, x, index)`` per layer (eager
only: inside a graph there is no per-layer Python call to trace). Nothing here
synchronises; the caller decides when to wait, and turns autograd off
(``torch.set_grad_enabled(False)``) before building or running one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

RunBlock = Callable[[Any, Any, int], Any]


@dataclass
class Workload:
    name: str
    step: Callable[[int], None]
    step_layers: Optional[Callable[[int, RunBlock], None]]
    baselines: dict[str, Callable[[int], None]] = field(default_factory=dict)


def _modules(torch: Any) -> tuple[Any, Any]:
    nn, functional = torch.nn, torch.nn.functional

    class MlpBlock(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x: Any) -> Any:
            return x + self.down(functional.gelu(self.up(x)))

    class TransformerBlock(nn.Module):
        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.mlp = MlpBlock(width)

        def forward(self, x: Any) -> Any:
            batch, tokens, width = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, width // self.heads).unbind(2)
            attended = functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), is_causal=True)
            x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
            return self.mlp(self.norm2(x))

    return MlpBlock, TransformerBlock


def _eager(blocks: list, x: Any) -> tuple[Callable[[int], None], Callable[[int, RunBlock], None]]:
    def step(index: int) -> None:
        y = x
        for block in blocks:
            y = block(y)

    def step_layers(index: int, run_block: RunBlock) -> None:
        y = x
        for block in blocks:
            y = run_block(block, y, index)

    return step, step_layers


def _graphed(torch: Any, blocks: list, x: Any) -> Callable[[int], None]:
    """The whole forward captured once as a CUDA graph; a step is one replay."""
    eager, _ = _eager(blocks, x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as torch's graph docs do
        for index in range(3):
            eager(index)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        eager(0)
    return lambda index: graph.replay()


def transformer_workload(torch: Any, batch: int, graphs: bool, device: str = "cuda", width: int = 1024,
                         layers: int = 8, heads: int = 16, tokens: int = 32) -> Workload:
    _, block_class = _modules(torch)
    torch.manual_seed(0)
    blocks = [block_class(width, heads).to(device=device, dtype=torch.bfloat16).eval() for _ in range(layers)]
    x = torch.randn(batch, tokens, width, device=device, dtype=torch.bfloat16)
    name = f"transformer {layers}x{width}, batch {batch}, {'CUDA graph' if graphs else 'eager'}"
    if graphs:
        return Workload(name, _graphed(torch, blocks, x), None)
    step, step_layers = _eager(blocks, x)
    return Workload(name, step, step_layers)


def mlp_workload(torch: Any, device: str = "cuda", width: int = 4096, blocks: int = 16, batch: int = 8) -> Workload:
    """The reference decode-like loop, with the hand-written timing baselines of issue 11."""
    mlp_class, _ = _modules(torch)
    torch.manual_seed(0)
    mlps = [mlp_class(width).to(device=device, dtype=torch.bfloat16).eval() for _ in range(blocks)]
    x = torch.randn(batch, width, device=device, dtype=torch.bfloat16)
    step, step_layers = _eager(mlps, x)
    workload = Workload(f"decode-like MLP {blocks}x{width} bf16, batch {batch}", step, step_layers)
    if device == "cuda":
        workload.baselines = _baselines(torch, mlps, x)
    return workload


def _baselines(torch: Any, blocks: list, x: Any) -> dict[str, Callable[[int], None]]:
    """Ways to time the blocks without the plugin, for comparison (issue 11's reference figures)."""
    pool: list = []
    pending: list = []

    def take() -> Any:
        return pool.pop() if pool else torch.cuda.Event(enable_timing=True)

    def drain(recycle: bool, keep: int = 64) -> None:  # what a resolver thread would do, done inline
        while len(pending) > keep and pending[0][1].query():
            start, end = pending.pop(0)
            start.elapsed_time(end)
            if recycle:
                pool.extend((start, end))

    def timed_blocks(index: int, event: Callable[[], Any], sync: bool, recycle: bool) -> None:
        y = x
        for block in blocks:
            start, end = event(), event()
            start.record()
            y = block(y)
            end.record()
            if sync:
                end.synchronize()
                start.elapsed_time(end)
            else:
                pending.append((start, end))
        drain(recycle)

    def per_step(index: int) -> None:
        start, end = take(), take()
        start.record()
        y = x
        for block in blocks:
            y = block(y)
        end.record()
        pending.append((start, end))
        drain(True)

    fresh = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    return {
        "synchronize per block": lambda index: timed_blocks(index, fresh, True, False),
        "fresh events per block": lambda index: timed_blocks(index, fresh, False, False),
        "pooled events per block": lambda index: timed_blocks(index, take, False, True),
        "pooled events per step": per_step,
    }
