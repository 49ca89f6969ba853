"""sched-trace-cuda: GPU-side stage time from CUDA events, resolved off the scheduler thread.

Entry point ``cuda`` in the ``sched_trace`` group; settings in ``[plugins.cuda]``
(see docs/cuda.md). Importing this package never imports torch.
"""

from __future__ import annotations

from .plugin import HOOKS_NAME, CudaTimingPlugin, publish
from .resolver import GPU_SPAN_BASE, DeviceTimeline, PendingStage, Resolver, TimingEvent, gpu_track_tid
from .settings import Settings, parse_settings

__version__ = "0.1.0"


def is_gpu_event(event: object) -> bool:
    """True for the ``<stage>/gpu`` events this plugin publishes."""
    return getattr(event, "span_id", 0) >= GPU_SPAN_BASE


__all__ = [
    "GPU_SPAN_BASE", "HOOKS_NAME", "CudaTimingPlugin", "DeviceTimeline", "PendingStage", "Resolver",
    "Settings", "TimingEvent", "gpu_track_tid", "is_gpu_event", "parse_settings", "publish",
]
