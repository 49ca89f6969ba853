"""[plugins.prometheus] validation: every bad value fails at configure, naming key and value."""

from __future__ import annotations

import importlib.metadata
import socket

import pytest

import sched_trace
from sched_trace._manager import get_manager
from sched_trace_prometheus import DEFAULT_BUCKETS, PrometheusPlugin, parse_settings


@pytest.fixture(autouse=True)
def _forget_failed_configuration():
    yield
    sched_trace.shutdown()
    # A configure() that raised leaves its config with the manager, and shutdown()
    # skips when nothing was configured; forget it so the next test starts clean.
    get_manager().forget_config()


@pytest.mark.parametrize("settings, key, shown", [
    ({"port": -1}, "plugins.prometheus.port", "-1"),
    ({"port": 70000}, "plugins.prometheus.port", "70000"),
    ({"port": "9464"}, "plugins.prometheus.port", "'9464'"),
    ({"port": True}, "plugins.prometheus.port", "True"),
    ({"addr": " "}, "plugins.prometheus.addr", "' '"),
    ({"buckets": []}, "plugins.prometheus.buckets", "[]"),
    ({"buckets": [0.1, 0.01]}, "plugins.prometheus.buckets", "[0.1, 0.01]"),
    ({"buckets": [0, 1]}, "plugins.prometheus.buckets", "[0, 1]"),
    ({"buckets": ["1s"]}, "plugins.prometheus.buckets", "['1s']"),
    ({"batch_size_buckets": [4, 4]}, "plugins.prometheus.batch_size_buckets", "[4, 4]"),
    ({"rank_labels": ["microbatch"]}, "plugins.prometheus.rank_labels", "['microbatch']"),
    ({"rank_labels": ["stage"]}, "plugins.prometheus.rank_labels", "['stage']"),
    ({"rank_labels": ["pp-rank"]}, "plugins.prometheus.rank_labels", "['pp-rank']"),
    ({"max_label_sets": 0}, "plugins.prometheus.max_label_sets", "0"),
    ({"capacity": 0}, "plugins.prometheus.capacity", "0"),
    ({"default_registry": "yes"}, "plugins.prometheus.default_registry", "'yes'"),
    ({"prot": 9464}, "plugins.prometheus.prot", "9464"),
])
def test_bad_settings_raise_config_error_naming_key_and_value(settings, key, shown):
    plugin = PrometheusPlugin()
    sched_trace.register(plugin, name="prometheus")
    with pytest.raises(sched_trace.ConfigError) as info:
        sched_trace.configure(config={"plugins": {"prometheus": settings}}, autoload=False)
    assert info.value.key == key
    assert shown in str(info.value)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(sched_trace.ConfigError, match="did you mean 'port'"):
        parse_settings({"prot": 9464})


def test_a_port_in_use_is_a_config_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "sched-trace.toml"
        config.write_text(f"[plugins.prometheus]\nport = {port}\n")
        sched_trace.register(PrometheusPlugin(), name="prometheus")
        with pytest.raises(sched_trace.ConfigError) as info:
            sched_trace.configure(config=config, autoload=False)
    assert str(config) in str(info.value) and f"port = {port}" in str(info.value)


def test_defaults_span_10_microseconds_to_10_seconds_and_serve_nothing():
    settings = parse_settings({})
    assert settings.port == 0 and settings.addr == "127.0.0.1"
    assert settings.buckets == DEFAULT_BUCKETS
    assert DEFAULT_BUCKETS[0] == 1e-5 and DEFAULT_BUCKETS[-1] == 10.0
    assert settings.rank_labels == ("thread_label", "pp_rank", "tp_rank", "dp_rank")


def test_the_entry_point_names_the_plugin_class():
    (entry_point,) = importlib.metadata.entry_points(group="sched_trace", name="prometheus")
    assert entry_point.load() is PrometheusPlugin


def test_two_plugins_cannot_both_join_the_default_registry():
    first, second = PrometheusPlugin(), PrometheusPlugin()
    sched_trace.register(first, name="prometheus")
    sched_trace.configure(config={"plugins": {"prometheus": {"default_registry": True}}}, autoload=False)
    with pytest.raises(sched_trace.ConfigError, match="default_registry = true"):
        sched_trace.register(second, name="prometheus-2")
