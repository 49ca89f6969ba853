"""Functions and classes the robustness tests trace: an ordinary module, no tracing code."""

from __future__ import annotations


def double(value: int) -> int:
    return 2 * value


class Stage:
    def __init__(self, stage_index: int) -> None:
        self.stage_index = stage_index

    def forward_one_chunk(self, chunk_id: int, value: int) -> int:
        return value + self.stage_index * 100 + chunk_id

    @classmethod
    def build(cls, stage_index: int) -> "Stage":
        return cls(stage_index)

    @staticmethod
    def scale(value: int) -> int:
        return 3 * value


def run_in_child(function, args, queue) -> None:  # type: ignore[no-untyped-def]
    queue.put(function(*args))
