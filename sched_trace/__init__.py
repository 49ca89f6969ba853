"""sched-trace: observability for batch schedulers, per rank and micro-batch.

Only re-exports; each name lives in a small private module of its own (see
docs/architecture.md for the layers and why each name is here). Plugin authors
have a surface of their own, :mod:`sched_trace.export`.
"""

from __future__ import annotations

from ._api import configure, register, reset_stats, stats, unregister
from ._errors import (
    ConfigError,
    ExtractorError,
    InstrumentationError,
    PluginError,
    SchedTraceError,
    SchedTraceWarning,
)
from ._events import BatchEvent, RankInfo, RequestEvent, StageEvent
from ._hookspecs import hookimpl
from ._instrument import Handle, batch, instrument, stage, uninstrument
from ._lifecycle import flush, shutdown
from ._rank import set_thread_info
from ._request_probe import request_event
from ._stages import get_level, set_level
from .config import Config
from .testing import MemoryRecorder

__version__ = "0.1.0"

__all__ = [
    # set up, run, stop (the contract of DESIGN.md, plus flush and the run-time level)
    "configure", "shutdown", "flush", "register", "unregister", "hookimpl", "set_level", "get_level",
    # what to trace
    "stage", "batch", "instrument", "uninstrument", "Handle", "set_thread_info", "request_event",
    # what comes out: events, counters, the in-memory recorder, the analysis
    "StageEvent", "BatchEvent", "RequestEvent", "RankInfo", "Config", "MemoryRecorder", "stats",
    "reset_stats", "analysis",
    # what goes wrong
    "SchedTraceError", "ConfigError", "ExtractorError", "InstrumentationError", "PluginError",
    "SchedTraceWarning",
]


def __getattr__(name: str) -> object:
    # Analysis pulls in more than the hot path needs: import it on first use.
    if name == "analysis":
        import importlib

        return importlib.import_module(".analysis", __name__)
    raise AttributeError(f"module 'sched_trace' has no attribute {name!r}")
