"""The ``cuda`` plugin: lifecycle, availability, and publishing GPU stage events.

torch is never imported here, and CUDA never initialised: a CPU-only process, or
one about to fork, stays as it was. When the program has not imported torch yet,
a post-import hook waits for it; when CUDA is present but not initialised yet,
a call queued on torch's lazy CUDA initialisation switches timing on. Until then
the plugin has no event hooks, so it costs the scheduler nothing. Where torch or
CUDA is missing it logs one line and reports ``available: 0``.

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

import wrapt

import sched_trace
from sched_trace import StageEvent
from sched_trace.export import EventBuffer
from sched_trace.export import emit, is_registered

from .recording import GpuStageHooks, ResolverThread, pause_during_graph_capture
from .resolver import Resolver
from .settings import Settings, parse_settings

log = logging.getLogger("sched_trace.cuda")

HOOKS_NAME = "cuda-events"
WAITER_NAME = "cuda-waiter"
DISABLED = "disabled by [plugins.cuda] enabled = false"


def publish(events: Sequence[StageEvent]) -> None:
    """Deliver finished events to every plugin's ``sched_trace_stage_end``, guarded per plugin."""
    emit(events)


class _Waiter:
    """Fallback for a torch without ``torch.cuda._lazy_call``: checks on each stage start."""

    def __init__(self, owner: "CudaTimingPlugin") -> None:
        self._owner = owner

    def sched_trace_stage_start(self, event: StageEvent) -> None:
        torch = sys.modules["torch"]
        if torch.cuda.is_initialized():
            self._owner._cuda_initialised(torch)
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
        self._import_hook = False  # a post-import hook for torch is registered
        self._init_hook = False  # a call is queued for torch's CUDA initialisation
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
        self.state = "waiting"
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
        elif not self._import_hook:
            self._import_hook = True
            wrapt.register_post_import_hook(self._torch_imported, "torch")

    def _torch_imported(self, torch: Any) -> None:
        try:  # runs inside the program's `import torch`: must never raise into it
            self.check_torch(torch)
        except Exception:
            log.exception("sched-trace-cuda: could not inspect torch after import")

    def check_torch(self, torch: Any) -> None:
        """Decide from an imported torch: active, unavailable, or wait for CUDA initialisation."""
        wait_for_init = False
        with self._lock:
            if self.state != "waiting":
                return
            try:
                if getattr(torch.version, "cuda", None) is None:
                    self._set_unavailable(f"torch {torch.__version__} is a build without CUDA")
                elif torch.cuda.is_initialized():
                    self._activate(torch)
                elif not torch.cuda.is_available():
                    self._set_unavailable(f"torch {torch.__version__} finds no CUDA device")
                else:
                    wait_for_init = not self._init_hook
                    self._init_hook = True
            except Exception as exc:  # a half-imported or broken torch: stay out of the way
                self._set_unavailable(f"torch could not be queried ({exc!r})")
        if wait_for_init:  # outside our lock: torch takes its own initialisation lock here
            self._call_at_cuda_init(torch)

    def _call_at_cuda_init(self, torch: Any) -> None:
        lazy_call = getattr(torch.cuda, "_lazy_call", None)
        if lazy_call is None:  # torch moved its private hook: check on each stage start instead
            with self._lock:
                if self.state == "waiting" and self._waiter is None:
                    self._waiter = _Waiter(self)
                    sched_trace.register(self._waiter, name=WAITER_NAME)
            return
        # torch runs queued calls inside its lazy CUDA initialisation (as manual_seed does).
        lazy_call(lambda: self._cuda_initialised(torch))

    def _cuda_initialised(self, torch: Any) -> None:
        try:  # runs inside torch's CUDA initialisation: must never raise into it
            with self._lock:
                if self.state == "waiting":
                    self._activate(torch)
        except Exception:
            log.exception("sched-trace-cuda: could not start GPU stage timing")

    def _set_unavailable(self, reason: str, quiet: bool = False) -> None:
        self._unregister_waiter()
        self._deactivate()
        if not quiet:
            log.info("sched-trace-cuda: GPU stage timing is off: %s. Stages are traced on the CPU "
                     "as usual; sched_trace.stats()['plugins']['cuda']['available'] is 0.", reason)
        self.state, self.reason = "unavailable", reason

    def _unregister_waiter(self) -> None:
        if self._waiter is not None:
            sched_trace.unregister(self._waiter)
            self._waiter = None

    def _activate(self, torch: Any) -> None:
        self._unregister_waiter()
        if not is_registered(self):  # unregistered while waiting: stay out
            self.state = "unconfigured"
            return
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
        log.info("sched-trace-cuda: timing stages on the GPU with CUDA events")

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
