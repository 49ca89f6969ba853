"""sched-trace's benchmark suite: ``python -m benchmarks [--quick] [--only NAME]``.

Each ``bench_*`` module exposes ``run(quick: bool) -> list[dict]``; a row has the
keys ``figure``, ``value``, ``baseline``, ``ratio`` and ``unit`` (and optionally
``target``, ``met``, ``note``, ``group``). The runner prints every row and writes
``docs/performance.md``. Numbers are reported, never asserted.
"""

from __future__ import annotations

#: Bench modules in run order; a missing one is skipped, a failing one reported.
MODULES = ("call", "dispatch", "threads", "memory", "ranks", "instructions", "otel", "serving", "bubbles", "faults",
           "engines", "fleet", "encoders", "exporters", "cold")
