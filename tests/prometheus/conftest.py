from __future__ import annotations

import urllib.request
from typing import Any, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sched_trace
from sched_trace._manager import get_manager
from sched_trace_prometheus import PrometheusPlugin


def scrape(port: int) -> dict[str, Any]:
    """GET /metrics on 127.0.0.1 and index the samples: {name: [(labels, value), ...]}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    matches = [v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples in {samples.get(name)}"
    return matches[0]


@pytest.fixture
def start_prometheus() -> Iterator[Callable[..., PrometheusPlugin]]:
    """Configure sched-trace with a fresh PrometheusPlugin and the given settings."""
    started: list[PrometheusPlugin] = []

    def start(**settings: Any) -> PrometheusPlugin:
        plugin = PrometheusPlugin()
        sched_trace.register(plugin, name="prometheus")
        started.append(plugin)
        sched_trace.configure(level=9, config={"plugins": {"prometheus": settings}}, autoload=False)
        return plugin

    yield start
    sched_trace.shutdown()
    for plugin in started:
        if get_manager().get_name(plugin) is not None:
            sched_trace.unregister(plugin)


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on right now (bound once, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
