"""A pipeline engine that dispatches through a table, the way DeepSpeed's
``PipelineEngine._INSTRUCTION_MAP`` does: patching the class attribute would not
reach the calls, because the table holds the original functions."""

from __future__ import annotations

from types import MethodType
from typing import Any


class PipeInstruction:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class ForwardPass(PipeInstruction):
    pass


class BackwardPass(PipeInstruction):
    pass


class OptimizerStep(PipeInstruction):
    pass


class PipelineEngine:
    def __init__(self, stage_id: int) -> None:
        self.stage_id = stage_id
        self.log: list[tuple[str, Any]] = []

    def _exec_forward_pass(self, buffer_id: int) -> None:
        self.log.append(("forward", buffer_id))

    def _exec_backward_pass(self, buffer_id: int) -> None:
        self.log.append(("backward", buffer_id))

    def _exec_optimizer_step(self) -> None:
        self.log.append(("step", None))

    _INSTRUCTION_MAP = {
        ForwardPass: _exec_forward_pass,
        BackwardPass: _exec_backward_pass,
        OptimizerStep: _exec_optimizer_step,
    }
    BY_NAME = {"forward": _exec_forward_pass, 7: _exec_backward_pass}
    NOT_A_TABLE = (_exec_forward_pass,)

    def exec_schedule(self, instructions: list[PipeInstruction]) -> None:
        for cmd in instructions:
            MethodType(self._INSTRUCTION_MAP[type(cmd)], self)(**cmd.kwargs)


def one_step(engine: PipelineEngine, microbatches: int) -> None:
    schedule: list[PipeInstruction] = [ForwardPass(buffer_id=i) for i in range(microbatches)]
    schedule += [BackwardPass(buffer_id=i) for i in range(microbatches)]
    engine.exec_schedule(schedule + [OptimizerStep()])
