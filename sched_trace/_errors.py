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


class TraceFormatError(SchedTraceError, ValueError):
    """A file is not a trace sched-trace can read, or is damaged: names the file and the spot.

    ``detail`` is the problem alone; ``path`` and ``where`` (``line 3``,
    ``traceEvents[7]``, ``packet 12``) are prefixed to the message when known.
    """

    def __init__(self, detail: str, *, path: Optional[str] = None, where: Optional[str] = None) -> None:
        self.detail, self.path, self.where = detail, path, where
        prefix = (f"{path}: " if path else "") + (f"{where}: " if where else "")
        super().__init__(prefix + detail)

    def located(self, path: str, where: Optional[str] = None) -> "TraceFormatError":
        """The same error naming ``path`` (and ``where``, unless it already names a spot)."""
        if self.path is not None:
            return self
        return type(self)(self.detail, path=path, where=self.where or where)


class EmptyTraceError(TraceFormatError):
    """The file holds nothing (0 bytes, or only whitespace): callers reading many files skip it."""


class NotATraceError(TraceFormatError):
    """The file is readable but is no trace at all (``report.json``): skipped inside directories."""


class SchedTraceWarning(UserWarning):
    """Something was skipped that the user probably wanted (an unresolved target ...)."""


class AnalysisError(SchedTraceError, ValueError):
    """The events cannot answer the question asked (no step left to analyse ...)."""
