"""What an exporter plugin supplies: an object that exports batches of events. The core owns the rest.

Modelled on OpenTelemetry's ``SpanExporter`` (``sdk/trace/export``): the exporter
only exports; the processor (:class:`~.processor.ExportProcessor`, the
``BatchSpanProcessor`` of this project) owns the buffer, the thread, the exporter
process, back-pressure, restarts, the shutdown deadline and the counters.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence


class Exporter:
    """Subclass it, or write any class with these four methods.

    An exporter runs in the exporter process (``process=True``, the default) or on
    the plugin's exporter thread; either way it is built from its class and keyword
    options (plain data) and receives the same events, decoded from the same frames
    (:mod:`sched_trace.export`): read them by field name. Only one thread calls it.
    """

    def export(self, events: Sequence[Any]) -> None:
        """Write or send ``events`` (a list of StageEvent, BatchEvent and RequestEvent, in end order).

        Write through: what was handed over should reach its file or receiver within
        the call, or within a bounded time after it. Raising counts the batch as failed;
        the next batch still comes.
        """
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        """Write or send everything held back, within ``timeout`` seconds; whether all of it went."""
        return True

    def shutdown(self, timeout: float) -> None:
        """Flush, then release files, connections and threads, within ``timeout`` seconds."""

    def counters(self) -> Mapping[str, Any]:
        """Numbers for :func:`sched_trace.stats`, flat (``exported`` = what reached the destination,
        in the exporter's own unit: spans, slices ...). Must be cheap; called from another thread."""
        return {}


def target_of(exporter_class: "type | str") -> str:
    """``"module:QualName"``, what an exporter process imports; only classes in importable modules.

    A plugin may name its exporter by that string, so that the scheduler process never
    imports what only the exporter runs.
    """
    if isinstance(exporter_class, str):
        if ":" not in exporter_class:
            raise ValueError(f"{exporter_class!r}: name an exporter class as 'module:QualName'")
        return exporter_class
    module, name = exporter_class.__module__, exporter_class.__qualname__
    if module == "__main__" or "<locals>" in name:
        raise ValueError(f"{module}.{name}: an exporter that runs in its own process must be a class "
                         "defined at the top level of an importable module (the exporter process imports it)")
    return f"{module}:{name}"


def load(target: "type | str") -> type:
    """The exporter class ``target`` names (a class is its own answer)."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found
