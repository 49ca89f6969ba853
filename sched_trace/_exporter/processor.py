"""The processor: one bounded buffer and exporter thread in front, one exporter behind, in a thread or a process.

Modelled on OpenTelemetry's ``BatchSpanProcessor``: the hook appends to the
buffer (:class:`~sched_trace.export.BackgroundExporter`); its thread drains it in
batches, encodes each batch once (:mod:`.codec`) and either writes the frame to the
exporter process (``process=True``) or decodes it and calls the exporter itself.
Either way the exporter sees the same events.

Back-pressure, the one policy: events are dropped, and counted, only when the
buffer in front is full. Behind it nothing drops: the exporter thread waits while
the exporter process's pipe is full, and the exporter process reads the next frame
only when the previous one was exported. A drop leaves a ``sched_trace.dropped``
marker event per rank in the stream, so every output shows where and how many.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from ..recorder import DEFAULT_CAPACITY, BackgroundExporter, loss_warning
from .codec import EventEncoder, decode_events
from .exporter import load, target_of
from .process import LIVE_KEYS, ExporterProcess

log = logging.getLogger("sched_trace")
#: Events per frame: large enough that per-frame costs (a syscall, a pickler) are small per event.
MAX_BATCH = 1024
Options = Callable[[], Mapping[str, Any]]


class ExporterUnavailable(RuntimeError):
    """No exporter process could take a batch (it died too often, or could not start)."""


class _ProcessBack:
    """The exporter in its own process: frames over a pipe."""

    def __init__(self, name: str, exporter_class: type, options: Options, restart_limit: int) -> None:
        target = target_of(exporter_class)
        self.encoder = EventEncoder()
        self.process = ExporterProcess(name, lambda: ("init", target, dict(options()), name), restart_limit,
                                       on_start=self.encoder.reset)

    def export(self, batch: Sequence[Any]) -> None:
        if not self.process.send(self.encoder.encode(batch), len(batch)):
            raise ExporterUnavailable("no exporter process to take the events")

    def flush(self, timeout: float) -> bool:
        return self.process.flush(timeout)

    def close(self, timeout: float) -> None:
        self.process.close(timeout)

    def stats(self) -> dict[str, Any]:
        return {**self.process.stats(), **self.encoder.counters()}


class _ThreadBack:
    """The exporter on the exporter thread: the same frames, decoded at once."""

    def __init__(self, exporter_class: type, options: Options) -> None:
        self.exporter_class, self.options = exporter_class, options
        self.encoder = EventEncoder()
        self.exporter: Any = None
        self.pid = 0
        self.handled = 0
        self.final: dict[str, Any] = {}  # counters of exporters let go (a fork, a restart)

    def _local(self) -> Any:
        if self.exporter is None or self.pid != os.getpid():
            # A fork child inherits the parent's exporter (its files): never touched here, a new one is built.
            self.exporter, self.pid = load(self.exporter_class)(**self.options()), os.getpid()
            self.encoder.reset()
        return self.exporter

    def export(self, batch: Sequence[Any]) -> None:
        exporter = self._local()
        exporter.export(decode_events(self.encoder.encode(batch)))
        self.handled += len(batch)

    def flush(self, timeout: float) -> bool:
        exporter = self.exporter
        return exporter is None or self.pid != os.getpid() or bool(exporter.flush(timeout))

    def close(self, timeout: float) -> None:
        exporter, self.exporter = self.exporter, None
        if exporter is not None and self.pid == os.getpid():
            exporter.shutdown(timeout)
            self.final = _counters(exporter)

    def stats(self) -> dict[str, Any]:
        exporter = self.exporter
        counters = _counters(exporter) if exporter is not None and self.pid == os.getpid() else self.final
        return {**counters, "handled": self.handled, **self.encoder.counters()}


def _counters(exporter: Any) -> dict[str, Any]:
    try:
        return dict(exporter.counters())
    except Exception:  # counters are reporting, never a reason to fail
        return {}


class ExportProcessor:
    """A buffer, its exporter thread, and one exporter (class + options) behind them.

    ``options()`` gives the exporter's keyword arguments (plain data) each time one is
    built: at each start of an exporter process, and in a fork child. ``append`` is
    the hot path (bind it as the hook). :meth:`configure` swaps the exporter behind the
    same buffer; :meth:`shutdown` exports what is buffered and stops, within its
    timeout, then logs one warning line if any event was lost.
    """

    def __init__(self, name: str, exporter_class: type, options: Options, *, process: bool = True,
                 capacity: int = DEFAULT_CAPACITY, restart_limit: int = 10, max_batch: int = MAX_BATCH,
                 advice: str = "") -> None:
        self.name = name
        self.advice = advice  # what to raise when the buffer was full, e.g. "[plugins.otel] capacity"
        # taken: its batches go to the encoder as they leave the buffer (a Ring's records are
        # encoded without an event object made for them: recorder.EventBuffer.take)
        self._front = BackgroundExporter(self._export, name=name, capacity=capacity, max_batch=max_batch,
                                         drop_markers=True, warn=False, taken=True)
        self.append: Callable[[Any], None] = self._front.append
        self._back: Any = None
        self._closed = False
        self._seen: dict[str, list[str]] = {}
        self._retired: dict[str, Any] = {}
        self._seen_pid = os.getpid()
        self.configure(exporter_class, options, process=process, capacity=capacity, restart_limit=restart_limit)

    def configure(self, exporter_class: type, options: Options, *, process: bool = True,
                  capacity: int = DEFAULT_CAPACITY, restart_limit: int = 10, timeout: float = 5.0) -> None:
        """The exporter behind the buffer from now on; the previous one exports what it was given first."""
        self._spec = (exporter_class, options, process, restart_limit)
        back = self._new_back()
        if self._back is not None:
            self._front.flush(timeout)
        self._front.buffer.capacity = capacity
        old, self._back = self._back, back
        if old is not None:
            old.close(timeout)
            self._retire(old)

    def _new_back(self) -> Any:
        exporter_class, options, process, restart_limit = self._spec
        self._closed = False
        if process:
            return _ProcessBack(self.name, exporter_class, options, restart_limit)
        return _ThreadBack(exporter_class, options)

    @property
    def process(self) -> Optional[ExporterProcess]:
        """The exporter process handle, when the exporter runs in one."""
        back = self._back
        return back.process if isinstance(back, _ProcessBack) else None

    def _export(self, batch: Sequence[Any]) -> None:
        if self._closed:  # events after a shutdown: configured again, a new exporter
            old, self._back = self._back, self._new_back()
            self._retire(old)
        self._back.export(batch)

    def flush(self, timeout: float) -> bool:
        """Everything appended so far through the exporter and its own flush, within ``timeout``."""
        deadline = time.monotonic() + timeout
        done = self._front.flush(timeout)
        return self._back.flush(max(0.0, deadline - time.monotonic())) and done

    def shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._front.shutdown(timeout)
        self._closed = True
        self._back.close(max(0.0, deadline - time.monotonic()))
        warning = loss_warning(self.name, self.stats(), self.advice)
        if warning:
            log.warning(warning)

    def stats(self) -> dict[str, Any]:
        """The buffer's counters (``received``, ``dropped``, ``sent`` ...), the exporter process's
        (``lost_in_exporter`` ...) and the exporter's own, flat."""
        front = self._front.stats()
        back = self._back.stats()
        self._remember(back)
        for key, value in self._retired.items():
            back[key] = back.get(key, 0) + value
        # "failed" sums both ends; failed_in_exporter (events the exporter process handled but
        # whose export() raised) tells them apart for the loss identity (docs/reliability.md).
        failed_in_exporter = back.pop("failed", 0)
        sent, failed = front.pop("exported"), front.pop("failed") + failed_in_exporter
        return {**back, **front, "sent": sent, "failed": failed, "failed_in_exporter": failed_in_exporter}

    def _retire(self, back: Any) -> None:
        """Keep the counters of an exporter let go: the plugin's totals go on from them."""
        counters = back.stats()
        self._remember(counters)
        for key, value in counters.items():
            if key not in LIVE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._retired[key] = self._retired.get(key, 0) + value

    def _remember(self, counters: Mapping[str, Any]) -> None:
        if self._seen_pid != os.getpid():  # forked: what the parent's exporters wrote is not ours
            self._seen, self._retired, self._seen_pid = {}, {}, os.getpid()
        process = self.process
        texts = [counters.items(), *(((k, v) for v in vs) for k, vs in process.texts.items())] if process else [
            counters.items()]
        for items in texts:
            for key, value in items:
                if isinstance(value, str) and value not in self._seen.setdefault(key, []):
                    self._seen[key].append(value)

    def seen(self, key: str) -> list[str]:
        """Every text value counter ``key`` has had (the file of each exporter process ...), oldest first."""
        self.stats()
        return list(self._seen.get(key, ()))
