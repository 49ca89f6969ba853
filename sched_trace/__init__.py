"""sched-trace: observability for batch schedulers, per rank and micro-batch.

Only re-exports; each name lives in a small module of its own.
"""

from __future__ import annotations

from .api import configure, flush, register, reset_stats, shutdown, stats, unregister
from .config import Config
from .errors import (
    ConfigError,
    ExtractorError,
    InstrumentationError,
    PluginError,
    SchedTraceError,
    SchedTraceWarning,
)
from .events import BatchEvent, RankInfo, RequestEvent, StageEvent
from .hookspecs import hookimpl
from .instrument import Handle, batch, instrument, stage, uninstrument
from .rank import set_thread_info
from .recorder import BackgroundExporter, EventBuffer
from .testing import MemoryRecorder
from .request_probe import request_event
from .stages import get_level, set_level

__version__ = "0.1.0"

__all__ = [
    "BackgroundExporter", "BatchEvent", "Config", "ConfigError", "EventBuffer", "ExtractorError",
    "Handle", "InstrumentationError", "MemoryRecorder", "PluginError", "RankInfo", "RequestEvent",
    "SchedTraceError", "SchedTraceWarning", "StageEvent", "analysis", "batch", "configure",
    "flush", "get_level", "hookimpl", "instrument", "register", "request_event", "reset_stats", "set_level",
    "set_thread_info", "shutdown", "stage", "stats", "uninstrument", "unregister",
]


def __getattr__(name: str) -> object:
    # Analysis pulls in more than the hot path needs: import it on first use.
    if name == "analysis":
        import importlib

        return importlib.import_module(".analysis", __name__)
    raise AttributeError(f"module 'sched_trace' has no attribute {name!r}")
