"""torch.compile over traced code: no graph breaks, and nothing recorded while tracing."""

from __future__ import annotations

import pytest

import sched_trace
from sched_trace import _probe as probe

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@sched_trace.stage("compiled_layer", level=2, microbatch="chunk_id")
def layer(x: "torch.Tensor", chunk_id: int = 0) -> "torch.Tensor":
    return torch.relu(x) * 2


def model_step(x: "torch.Tensor") -> "torch.Tensor":
    return layer(x, 1) + 1


class Block:
    def __init__(self) -> None:
        self.weight = torch.ones(4)

    def forward_one_chunk(self, x: "torch.Tensor", chunk_id: int) -> "torch.Tensor":
        return x * self.weight + chunk_id


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.block.forward_one_chunk(x, 3).sum()


@pytest.fixture
def recorder():
    """Records start events too: a stage begun during tracing would show up at once."""
    memory = sched_trace.MemoryRecorder(starts=True)
    sched_trace.register(memory)
    sched_trace.set_level(9)
    torch._dynamo.reset()
    yield memory
    sched_trace.unregister(memory)
    torch._dynamo.reset()


def test_the_compiling_hook_is_torch_compiler_is_compiling() -> None:
    sched_trace.instrument("tests.robustness.workload:double")
    assert probe.compiling[0] is torch.compiler.is_compiling


def test_fullgraph_compile_of_a_function_calling_a_traced_stage(recorder) -> None:
    x = torch.randn(4)
    compiled = torch.compile(model_step, fullgraph=True, backend="eager")  # raises on a graph break
    assert torch.equal(compiled(x), torch.relu(x) * 2 + 1)
    assert recorder.events == []
    model_step(x)  # eager calls are still traced
    assert [e.microbatch for e in recorder.stages("compiled_layer")] == [1, 1]  # start and end


def test_explain_counts_no_graph_break_through_an_instrumented_method(recorder) -> None:
    sched_trace.instrument("tests.robustness.test_torch_compile:Block.forward_one_chunk", stage="block",
                           microbatch="chunk_id")
    net = Net()
    explanation = torch._dynamo.explain(net)(torch.randn(4))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert recorder.events == []
    torch.compile(net, fullgraph=True, backend="eager")(torch.randn(4))
    assert recorder.events == []
    net(torch.randn(4))
    assert len(recorder.stages("block")) == 2


def test_a_traced_wrapper_skips_recording_whenever_torch_says_it_is_compiling(recorder) -> None:
    saved = probe.compiling[0]
    try:
        probe.compiling[0] = lambda: True
        layer(torch.randn(4), 2)
        assert recorder.events == []
        probe.compiling[0] = lambda: False
        layer(torch.randn(4), 2)
        assert len(recorder.events) == 2
    finally:
        probe.compiling[0] = saved


def test_a_traced_wrapper_reads_torchs_own_compiling_flag(recorder, monkeypatch) -> None:
    # What torch.compiler.is_compiling() returns while torch.compile traces; the C hot path
    # reads the flag itself, the Python one calls the function: both must see it.
    assert probe.compiling[1] is None or probe.compiling[1][0] is torch.compiler.is_compiling
    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", True)
    layer(torch.randn(4), 2)
    assert recorder.events == []
    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", False)
    layer(torch.randn(4), 2)
    assert len(recorder.events) == 2
