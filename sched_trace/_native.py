"""The optional C extension (``sched_trace/_speedups.c``), or None.

Built at install when a compiler is at hand (``setup.py``, an optional extension).
``speedups`` is None where it was not built, or where the environment sets
``SCHED_TRACE_PURE_PYTHON=1``: then every hot path runs its Python form (the
``_hotpath`` templates, ``recorder.BackgroundExporter.append``), which stays the
reference. Code that chooses a form reads ``speedups`` when it makes a probe or a
buffer, never at its own import, so one switch (tests/hot_path.py) chooses for all.
``built`` is the extension whatever the environment says (the clock offset it keeps).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional

try:
    from . import _speedups as built  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a build without the extension
    built: Optional[ModuleType] = None  # type: ignore[no-redef]

speedups: Optional[ModuleType] = None if os.environ.get("SCHED_TRACE_PURE_PYTHON") else built
