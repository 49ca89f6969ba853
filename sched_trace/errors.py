"""Exceptions and warnings raised for misuse: each names the thing and the fix."""

from __future__ import annotations

from typing import Any, Optional


class SchedTraceError(Exception):
    """Base class of sched-trace's own errors."""


class ConfigError(SchedTraceError, ValueError):
    """A configuration file, key or value is wrong. Names file, key and value."""

    def __init__(self, message: str, *, source: Optional[str] = None, key: Optional[str] = None) -> None:
        self.source = source
        self.key = key
        where = ""
        if source:
            where = f"{source}: "
        if key:
            where += f"[{key}] "
        super().__init__(where + message)


class ExtractorError(SchedTraceError, ValueError):
    """An extractor string or callable is malformed or names an unknown parameter."""


class InstrumentationError(SchedTraceError, ValueError):
    """A target cannot be instrumented: it does not exist, or is the wrong kind."""


class PluginError(SchedTraceError):
    """A plugin is invalid (unknown hook name, wrong signature); the plugin is attached."""

    def __init__(self, plugin: Any, message: str) -> None:
        self.plugin = plugin
        super().__init__(message)


class SchedTraceWarning(UserWarning):
    """Something was skipped that the user probably wanted (an unresolved target ...)."""


class AnalysisError(SchedTraceError, ValueError):
    """The events cannot answer the question asked (no step left to analyse ...)."""
