"""The ``cuda`` plugin: lifecycle, availability, and publishing GPU stage events.

torch is never imported here. The plugin looks at ``sys.modules``: until the
program has imported torch and initialised CUDA itself, a small waiter hook
checks on each stage start (one dict lookup while torch is absent), so the
plugin neither pays torch's import time nor creates a CUDA context a
CPU-only process (or one about to fork) should not have. Where torch or CUDA is
missing the plugin logs one line, reports ``available: 0``, and has no event
hooks at all, so it adds nothing to the scheduler's path.

GPU stage events are regular :class:`~sched_trace.StageEvent` objects delivered
through the ``sched_trace_stage_end`` hook of every other plugin, so exporters
consume them without knowing this plugin exists (see docs/cuda.md).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from typing import Any, Callable, Optional, Sequence

import sched_trace
from sched_trace import EventBuffer, StageEvent
from sched_trace.plugins import get_manager

from .recording import GpuStageHooks, ResolverThread, pause_during_graph_capture
from .resolver import Resolver
from .settings import Settings, parse_settings

log = logging.getLogger("sched_trace.cuda")

HOOKS_NAME = "cuda-events"
WAITER_NAME = "cuda-waiter"
DISABLED = "disabled by [plugins.cuda] enabled = false"


def publish(events: Sequence[StageEvent]) -> None:
    """Deliver finished events to every plugin's ``sched_trace_stage_end``, guarded per plugin."""
    manager = get_manager()
    calls = manager.stage_end
    for event in events:
        manager.fire(calls, event)


class _Waiter:
    """Registered while torch is not imported or CUDA not initialised yet."""

    def __init__(self, owner: "CudaTimingPlugin") -> None:
        self._owner = owner

    def sched_trace_stage_start(self, event: StageEvent) -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            self._owner.check_torch(torch)
            hooks = self._owner.active_hooks
            if hooks is not None:  # activated just now: time this stage as well
                hooks.sched_trace_stage_start(event)


class CudaTimingPlugin:
    """GPU-side time of each stage from CUDA events, published as ``<stage>/gpu`` events."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.state = "unconfigured"  # -> unavailable | waiting | active
        self.reason = ""
        self._lock = threading.RLock()
        self._hooks: Optional[GpuStageHooks] = None
        self._waiter: Optional[_Waiter] = None
        self._thread: Optional[ResolverThread] = None
        self._undo_graph_patch: Optional[Callable[[], None]] = None
        self._cuda_present = False
        self._handoff = EventBuffer(self.settings.max_pending)

    @property
    def active_hooks(self) -> Optional[GpuStageHooks]:
        """The registered event hooks while timing is active, else None."""
        return self._hooks

    # --- hooks ------------------------------------------------------------------

    @sched_trace.hookimpl
    def sched_trace_configure(self, config: sched_trace.Config) -> None:
        settings = parse_settings(config.plugin_settings("cuda"), config.source)
        with self._lock:
            if settings != self.settings and self.state == "active":
                self._deactivate()  # re-armed below with the new settings
            self.settings = settings
            self._handoff.capacity = settings.max_pending
            if self.reason == DISABLED and settings.enabled:
                self.state, self.reason = "unconfigured", ""
            if not settings.enabled:
                self._set_unavailable(DISABLED, quiet=True)
            elif self.state in ("unconfigured", "waiting"):
                self._decide()

    @sched_trace.hookimpl
    def sched_trace_flush(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.flush(timeout)

    @sched_trace.hookimpl
    def sched_trace_shutdown(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.flush(1.0)
            self._deactivate()
            self._unregister_waiter()
            if self.state != "unavailable":
                self.state = "unconfigured"

    @sched_trace.hookimpl
    def sched_trace_collect_stats(self) -> dict[str, int]:
        hooks, thread = self._hooks, self._thread
        resolver = thread.resolver if thread is not None else None
        return {
            "available": int(self.state == "active"),
            "waiting": int(self.state == "waiting"),
            "recorded": hooks.recorded if hooks else 0,
            "resolved": resolver.resolved if resolver else 0,
            "pending": (len(resolver.pending) if resolver else 0) + len(self._handoff),
            "dropped": self._handoff.dropped + (resolver.dropped if resolver else 0)
            + (hooks.open_overflow if hooks else 0),
            "expired": resolver.expired if resolver else 0,
            "failed": (resolver.failed if resolver else 0) + (hooks.device_switched if hooks else 0),
            "capture_skipped": hooks.capture_skipped if hooks else 0,
        }

    # --- availability -----------------------------------------------------------------

    def _decide(self) -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            self.check_torch(torch)
            return
        try:
            installed = importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError):  # ValueError: sys.modules["torch"] is None (blocked)
            installed = False
        if not installed:
            self._set_unavailable("torch is not installed")
        else:
            self._wait()

    def check_torch(self, torch: Any) -> None:
        """Decide from an imported torch: active, unavailable, or keep waiting for CUDA init."""
        with self._lock:
            if self.state == "active" or self.state == "unavailable":
                return
            try:
                if getattr(torch.version, "cuda", None) is None:
                    self._set_unavailable(f"torch {torch.__version__} is a build without CUDA")
                elif torch.cuda.is_initialized():
                    self._activate(torch)
                elif not (self._cuda_present or torch.cuda.is_available()):
                    self._set_unavailable(f"torch {torch.__version__} finds no CUDA device")
                else:
                    self._cuda_present = True  # asked once: the waiter runs on every stage
                    self._wait()  # time stages once the program initialises CUDA itself
            except Exception as exc:  # a half-imported torch: stay out of the way
                self._set_unavailable(f"torch could not be queried ({exc!r})")

    def _set_unavailable(self, reason: str, quiet: bool = False) -> None:
        self._unregister_waiter()
        self._deactivate()
        if not quiet:
            log.info("sched-trace-cuda: GPU stage timing is off: %s. Stages are traced on the CPU "
                     "as usual; sched_trace.stats()['plugins']['cuda']['available'] is 0.", reason)
        self.state, self.reason = "unavailable", reason

    def _wait(self) -> None:
        self.state = "waiting"
        if self._waiter is None:
            self._waiter = _Waiter(self)
            sched_trace.register(self._waiter, name=WAITER_NAME)

    def _unregister_waiter(self) -> None:
        if self._waiter is not None:
            sched_trace.unregister(self._waiter)
            self._waiter = None

    def _activate(self, torch: Any) -> None:
        self._unregister_waiter()
        hooks = GpuStageHooks(torch, self.settings, self._handoff)
        resolver = Resolver(recycle=hooks.recycle, suffix=self.settings.suffix,
                            expire_ns=int(self.settings.expire_s * 1e9), max_pending=self.settings.max_pending)
        self._thread = ResolverThread(resolver, self._handoff, publish, self.settings.poll_interval)
        graph_class = getattr(torch.cuda, "CUDAGraph", None)
        if graph_class is not None and "capture_begin" in graph_class.__dict__:
            self._undo_graph_patch = pause_during_graph_capture(graph_class, self._thread)
        self._thread.start()
        self._hooks = hooks
        sched_trace.register(hooks, name=HOOKS_NAME)
        self.state, self.reason = "active", ""
        log.info("sched-trace-cuda: timing stages on the GPU with CUDA events (device %d)",
                 torch.cuda.current_device())

    def _deactivate(self) -> None:
        if self._undo_graph_patch is not None:
            self._undo_graph_patch()
            self._undo_graph_patch = None
        if self._hooks is not None:
            sched_trace.unregister(self._hooks)
            self._hooks = None
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        if self.state == "active":
            self.state = "unconfigured"
