"""The collector a registry scrapes: stage metrics plus sched-trace's health counters.

Health values are read from :func:`sched_trace.stats` at scrape time, so they cost
nothing between scrapes and are never stale.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import sched_trace

from .metrics import NAMESPACE, StageMetrics


def _families() -> dict[str, Metric]:
    return {
        "plugin_errors": CounterMetricFamily(
            f"{NAMESPACE}_plugin_errors", "Exceptions raised by sched-trace plugins (counted, never raised).",
            labels=["plugin"]),
        "extract_missing": CounterMetricFamily(
            f"{NAMESPACE}_extract_missing", "Extractor reads that found nothing (recorded as missing).",
            labels=["extractor"]),
        "idle_calls": CounterMetricFamily(
            f"{NAMESPACE}_idle_calls", "Calls of a keep_if stage that its condition dropped as idle (no span).",
            labels=["stage"]),
        "thread_cpu": CounterMetricFamily(
            f"{NAMESPACE}_thread_cpu_seconds", "CPU each of sched-trace's own threads in this process has used.",
            labels=["thread"]),
        "dropped": CounterMetricFamily(
            f"{NAMESPACE}_events_dropped", "Events a plugin dropped because its buffer was full.",
            labels=["plugin"]),
        "plugin_stat": GaugeMetricFamily(
            f"{NAMESPACE}_plugin_stat", "Every numeric counter a plugin reports in sched_trace.stats().",
            labels=["plugin", "stat"]),
        "level": GaugeMetricFamily(f"{NAMESPACE}_level", "The sched-trace verbosity level in effect (a level "
                                   "file's, while the process follows one that holds a level)."),
        "level_file_refused": CounterMetricFamily(
            f"{NAMESPACE}_level_file_refused", "Contents of the level file that were not a level, and looks at "
            "it that failed: each time the level was kept (0 without a level file)."),
        "unresolved": GaugeMetricFamily(
            f"{NAMESPACE}_unresolved_targets", "instrument() targets whose module or attribute is missing."),
        "overflow": CounterMetricFamily(
            f"{NAMESPACE}_prometheus_label_overflow",
            "Events not observed because max_label_sets distinct label sets exist already."),
    }


def health_families(stats: Mapping[str, Any], overflow: int) -> list[Metric]:
    """Turn a :func:`sched_trace.stats` snapshot into metric families."""
    families = _families()
    for plugin, count in sorted(stats.get("plugin_errors", {}).items()):
        families["plugin_errors"].add_metric([plugin], count)
    for extractor, count in sorted(stats.get("extract_missing", {}).items()):
        families["extract_missing"].add_metric([extractor], count)
    for stage, count in sorted(stats.get("idle_calls", {}).items()):
        families["idle_calls"].add_metric([stage], count)
    for thread, seconds in sorted(stats.get("threads_cpu_s", {}).items()):
        families["thread_cpu"].add_metric([thread], seconds)
    for plugin, counters in sorted(stats.get("plugins", {}).items()):
        for stat, value in sorted(counters.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            families["plugin_stat"].add_metric([plugin, stat], value)
            if stat == "dropped":
                families["dropped"].add_metric([plugin], value)
    families["level"].add_metric([], stats.get("level", 0))
    level_file = stats.get("level_file") or {}
    families["level_file_refused"].add_metric([], level_file.get("rejected", 0) + level_file.get("errors", 0))
    families["unresolved"].add_metric([], len(stats.get("unresolved_targets", ())))
    families["overflow"].add_metric([], overflow)
    return list(families.values())


class SchedTraceCollector(Collector):
    """Exposes one plugin's metrics; register it in any CollectorRegistry.

    ``before_scrape`` (the plugin's bounded flush) runs first so a scrape sees
    every event that ended before it.
    """

    def __init__(self, metrics: Callable[[], StageMetrics], before_scrape: Callable[[], None]) -> None:
        self._metrics = metrics
        self._before_scrape = before_scrape

    def collect(self) -> Iterable[Metric]:
        self._before_scrape()
        metrics = self._metrics()
        yield from metrics.collect()
        yield from health_families(sched_trace.stats(), metrics.overflow)

    def describe(self) -> Iterable[Metric]:
        # Names only, so a registry can refuse duplicates without running a scrape.
        yield from self._metrics().describe()
        yield from _families().values()
