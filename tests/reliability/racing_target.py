"""Code the concurrency tests instrument and uninstrument while threads call it."""

from __future__ import annotations


class Engine:
    def step(self, value: int) -> int:
        return value * 2 + 1


def run_step(value: int) -> int:
    return value * 3
