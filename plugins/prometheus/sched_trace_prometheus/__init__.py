"""sched-trace-prometheus: stage latency histograms, batch counters, request latency
histograms (TTFT, TPOT, queue, end to end), per-rank bubble ratio, health counters.

Entry point ``prometheus`` in the ``sched_trace`` group; settings in
``[plugins.prometheus]`` (see docs/prometheus.md).
"""

from __future__ import annotations

from .collector import SchedTraceCollector, health_families
from .metrics import NAMESPACE, StageMetrics
from .multiprocess import multiprocess_registry, serve_multiprocess
from .utilization import RankUtilization
from .plugin import PrometheusPlugin
from .requests import RequestMetrics
from .settings import (
    DEFAULT_BATCH_SIZE_BUCKETS,
    DEFAULT_BUCKETS,
    DEFAULT_REQUEST_BUCKETS,
    DEFAULT_RANK_LABELS,
    Settings,
    parse_settings,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BATCH_SIZE_BUCKETS", "DEFAULT_BUCKETS", "DEFAULT_RANK_LABELS", "DEFAULT_REQUEST_BUCKETS",
    "NAMESPACE", "PrometheusPlugin", "RankUtilization", "RequestMetrics", "SchedTraceCollector", "Settings",
    "StageMetrics", "health_families",
    "multiprocess_registry", "parse_settings", "serve_multiprocess",
]
