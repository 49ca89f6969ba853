"""Histograms filled a batch at a time read exactly as if each value had been observed on its own."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sched_trace_prometheus.metrics import observe_many
from sched_trace_prometheus.settings import DEFAULT_BUCKETS


def exposition(fill) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("h", "values", ["rank"], buckets=DEFAULT_BUCKETS, registry=registry)
    fill(histogram.labels("0"))
    return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)


def test_observe_many_equals_observing_one_by_one() -> None:
    draw = random.Random(18)
    values = [draw.choice(DEFAULT_BUCKETS) for _ in range(300)]           # exactly on a bound
    values += [draw.uniform(0, 20) for _ in range(300)] + [0.0, 1e9, -1.0]  # between, past the last, below

    def one_by_one(child):
        for value in values:
            child.observe(value)

    assert exposition(lambda child: observe_many(child, values)) == exposition(one_by_one)


def test_a_histogram_without_the_internals_is_observed_value_by_value() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    observe_many(plain, [1.0, 2.0])
    assert plain.seen == [1.0, 2.0]
