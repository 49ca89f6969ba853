"""sched-trace-perfetto: each process writes its own Perfetto (or Chrome JSON) timeline.

Open the file at https://ui.perfetto.dev (it loads locally, in the browser); merge
per-rank files with ``sched-trace merge``.
"""

from __future__ import annotations

from .plugin import PerfettoPlugin
from .settings import PerfettoSettings

__all__ = ["PerfettoPlugin", "PerfettoSettings"]
