"""Dispatch tables: ``pkg.mod:Class.TABLE[KEY]`` traces the entry the library calls through."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import sched_trace
from sched_trace import ConfigError, InstrumentationError
from tests.robustness import toy_pipe_engine as toy

FORWARD = "tests.robustness.toy_pipe_engine:PipelineEngine._INSTRUCTION_MAP[ForwardPass]"


def forward_events(recorder: sched_trace.MemoryRecorder) -> list[sched_trace.StageEvent]:
    return recorder.stages("ForwardPass")


def test_a_table_entry_is_traced_with_its_arguments_and_instance(sched_trace_recorder) -> None:
    sched_trace.instrument(FORWARD, microbatch="buffer_id", rank={"pp_rank": "self.stage_id"})
    engine = toy.PipelineEngine(stage_id=1)
    toy.one_step(engine, microbatches=2)
    events = forward_events(sched_trace_recorder)
    assert [(e.microbatch, e.rank.pp_rank) for e in events] == [(0, 1), (1, 1)]
    assert engine.log[:2] == [("forward", 0), ("forward", 1)], "the engine still does its work"


def test_patching_the_method_alone_misses_table_calls(sched_trace_recorder) -> None:
    sched_trace.instrument("tests.robustness.toy_pipe_engine:PipelineEngine._exec_forward_pass")
    toy.one_step(toy.PipelineEngine(stage_id=0), microbatches=2)
    assert sched_trace_recorder.stages("_exec_forward_pass") == []


def test_one_event_none_after_uninstrument_one_again_after_reinstrument(sched_trace_recorder) -> None:
    original = toy.PipelineEngine._INSTRUCTION_MAP[toy.ForwardPass]
    handle = sched_trace.instrument(FORWARD)
    assert toy.PipelineEngine._INSTRUCTION_MAP[toy.ForwardPass] is not original
    toy.one_step(toy.PipelineEngine(0), microbatches=1)
    assert len(forward_events(sched_trace_recorder)) == 1
    handle.uninstrument()
    assert toy.PipelineEngine._INSTRUCTION_MAP[toy.ForwardPass] is original
    assert set(vars(toy.PipelineEngine)["_INSTRUCTION_MAP"]) == {toy.ForwardPass, toy.BackwardPass, toy.OptimizerStep}
    toy.one_step(toy.PipelineEngine(0), microbatches=1)
    assert len(forward_events(sched_trace_recorder)) == 1
    sched_trace.instrument(FORWARD)
    toy.one_step(toy.PipelineEngine(0), microbatches=1)
    assert len(forward_events(sched_trace_recorder)) == 2


def test_keys_may_be_dotted_names_strings_or_integers(sched_trace_recorder) -> None:
    module = "tests.robustness.toy_pipe_engine"
    sched_trace.instrument(f"{module}:PipelineEngine._INSTRUCTION_MAP[BackwardPass]",
                           stage="backward", microbatch="buffer_id")
    sched_trace.instrument(f"{module}:PipelineEngine.BY_NAME['forward']", stage="by_name")
    sched_trace.instrument(f"{module}:PipelineEngine.BY_NAME[7]", stage="by_number")
    engine = toy.PipelineEngine(0)
    toy.one_step(engine, microbatches=2)
    toy.PipelineEngine.BY_NAME["forward"](engine, 5)
    toy.PipelineEngine.BY_NAME[7](engine, buffer_id=6)
    assert [e.microbatch for e in sched_trace_recorder.stages("backward")] == [0, 1]
    assert len(sched_trace_recorder.stages("by_name")) == len(sched_trace_recorder.stages("by_number")) == 1


def test_a_dotted_key_is_looked_up_in_the_target_module(sched_trace_recorder) -> None:
    toy.schedule = toy  # DeepSpeed writes schedule.ForwardPass: a module attribute, then a name
    try:
        sched_trace.instrument(
            "tests.robustness.toy_pipe_engine:PipelineEngine._INSTRUCTION_MAP[schedule.ForwardPass]")
        toy.one_step(toy.PipelineEngine(0), microbatches=1)
        assert len(forward_events(sched_trace_recorder)) == 1
    finally:
        sched_trace.uninstrument()
        del toy.schedule


@pytest.mark.parametrize("target, message", [
    ("PipelineEngine._INSTRUCTION_MAP[SendGrad]", "key 'SendGrad' names nothing in module"),
    ("PipelineEngine.BY_NAME['backward']", "has no entry \"'backward'\" (entries: 'forward', 7)"),
    ("PipelineEngine.NOT_A_TABLE[0]", "is a tuple, not a dict-like dispatch table"),
    ("PipelineEngine._INSTRUCTION_MAPS[ForwardPass]", "has no attribute '_INSTRUCTION_MAPS'"),
])
def test_a_missing_entry_is_reported_with_what_the_table_holds(target: str, message: str) -> None:
    with pytest.raises(InstrumentationError) as caught:
        sched_trace.instrument(f"tests.robustness.toy_pipe_engine:{target}")
    assert message in str(caught.value)


@pytest.mark.parametrize("target", ["m:T[]", "m:T[a b]", "m:T[x][y]", "m:T[(1)]", "m:[x]"])
def test_malformed_table_targets_fail_when_declared(target: str) -> None:
    with pytest.raises(InstrumentationError, match="malformed|table key"):
        sched_trace.instrument(target)


def test_a_table_entry_in_a_config_file_is_patched_when_the_module_is_imported(sched_trace_recorder, tmp_path: Path) -> None:
    name = "tests.robustness.toy_pipe_engine"
    saved = sys.modules.pop(name)
    try:
        config = tmp_path / "sched_trace.toml"
        config.write_text(
            "[[instrument]]\n"
            f'target = "{name}:PipelineEngine._INSTRUCTION_MAP[ForwardPass]"\n'
            'stage = "forward_pass"\nmicrobatch = "buffer_id"\n'
            'rank = { pp_rank = "self.stage_id" }\n'
        )
        sched_trace.configure(config=str(config), autoload=False)
        import importlib

        fresh = importlib.import_module(name)
        assert fresh is not saved
        fresh.one_step(fresh.PipelineEngine(stage_id=2), microbatches=3)
        assert [(e.microbatch, e.rank.pp_rank) for e in sched_trace_recorder.stages("forward_pass")] == [
            (0, 2), (1, 2), (2, 2)]
    finally:
        sched_trace.uninstrument()
        sys.modules[name] = saved


def test_a_malformed_table_key_in_a_config_file_names_the_entry(tmp_path: Path) -> None:
    config = tmp_path / "sched_trace.toml"
    config.write_text('[[instrument]]\ntarget = "pkg.mod:Engine.TABLE[not valid]"\n')
    with pytest.raises(ConfigError, match=r"instrument\[0\]\.target"):
        sched_trace.configure(config=str(config), autoload=False)
