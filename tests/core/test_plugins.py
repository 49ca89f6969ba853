"""Plugins: registration, validation, fault isolation, entry points, blocking."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sched_trace
from sched_trace._manager import get_manager

REPO = Path(__file__).resolve().parents[2]


@sched_trace.stage("work", level=1, microbatch="mb")
def work(mb):
    return mb + 1


class Broken:
    def sched_trace_stage_end(self, event):
        raise ValueError("exporter bug")


def test_a_raising_plugin_is_counted_logged_once_and_harmless(sched_trace_recorder, caplog):
    broken = Broken()
    sched_trace.register(broken, name="broken")
    with caplog.at_level(logging.ERROR, logger="sched_trace"):
        results = [work(mb) for mb in range(5)]
    assert results == [1, 2, 3, 4, 5]
    # The other plugin still received every event.
    assert [e.microbatch for e in sched_trace_recorder.events] == [0, 1, 2, 3, 4]
    assert sched_trace.stats()["plugin_errors"] == {"broken": 5}
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1


def test_event_order_does_not_depend_on_which_plugin_fails(sched_trace_recorder):
    # Registered after the recorder, so it is called first (pluggy's LIFO order).
    sched_trace.register(Broken(), name="first-in-line")
    work(0)
    assert len(sched_trace_recorder.events) == 1


def test_misspelled_hook_fails_loudly_at_registration():
    class Typo:
        def sched_trace_stage_ned(self, event):
            pass

    with pytest.raises(sched_trace.PluginError, match="sched_trace_stage_ned") as raised:
        sched_trace.register(Typo())
    assert "Known hooks" in str(raised.value)
    assert get_manager().get_name(raised.value.plugin) is None  # not left registered


def test_wrong_hook_parameter_fails_at_registration():
    class Wrong:
        @sched_trace.hookimpl
        def sched_trace_stage_end(self, evnt):
            pass

    with pytest.raises(sched_trace.PluginError, match="evnt"):
        sched_trace.register(Wrong())


def test_hook_wrappers_are_refused_for_event_hooks():
    class Wrapper:
        @sched_trace.hookimpl(wrapper=True)
        def sched_trace_stage_end(self, event):
            return (yield)

    with pytest.raises(sched_trace.PluginError, match="hook wrapper"):
        sched_trace.register(Wrapper())


def test_no_listener_means_tracing_costs_one_comparison():
    from sched_trace._stages import LEVEL

    assert LEVEL.active == 0  # nothing registered: every stage is "above the level"
    assert work(1) == 2


def test_configure_hook_is_historic_for_late_plugins(sched_trace_recorder):
    seen = []

    class Late:
        def sched_trace_configure(self, config):
            seen.append(config.plugin_settings("late"))

    sched_trace.configure(config={"plugins": {"late": {"colour": "red"}}}, autoload=False)
    sched_trace.register(Late())
    assert seen == [{"colour": "red"}]


def test_plugin_config_error_reaches_the_user(sched_trace_recorder):
    class Strict:
        def sched_trace_configure(self, config):
            settings = config.plugin_settings("strict")
            if "port" in settings and not isinstance(settings["port"], int):
                raise sched_trace.ConfigError(f"port must be an integer, got {settings['port']!r}", key="plugins.strict.port")

    sched_trace.register(Strict(), name="strict")
    with pytest.raises(sched_trace.ConfigError, match=r"\[plugins.strict.port\] port must be an integer, got 'x'"):
        sched_trace.configure(config={"plugins": {"strict": {"port": "x"}}}, autoload=False)


def test_stats_include_each_plugins_counters(sched_trace_recorder):
    work(1)
    stats = sched_trace.stats()
    assert {"recorded": 1, "dropped": 0} in stats["plugins"].values()


def _install_hello(target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(REPO / "tests" / "plugin_dist")],
        check=True, capture_output=True,
    )


def _run_with(site: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import sched_trace
        sched_trace.configure()
        @sched_trace.stage("hello_stage", level=1)
        def f():
            return 1
        f(); f()
        print(sorted(name for name, _ in __import__("sched_trace._manager")._manager.get_manager().list_name_plugin()))
        sched_trace.shutdown()
    """)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
                   "SCHED_TRACE_HELLO_OUT": str(tmp_path / "hello.out"), **env}
    for key in ("SCHED_TRACE_BLOCK", "SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD"):
        if key not in env:
            environment.pop(key, None)
    # cwd: the other installed plugins (perfetto, otel) write ./sched-trace-out/ there, not in the checkout
    return subprocess.run([sys.executable, "-c", script], env=environment, cwd=tmp_path, capture_output=True,
                          text=True, check=True)


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    _install_hello(site)
    return site


def test_pip_installed_plugin_is_found_through_its_entry_point(hello_site, tmp_path):
    result = _run_with(hello_site, tmp_path)
    assert "'hello'" in result.stdout
    assert (tmp_path / "hello.out").read_text() == "hello_stage,hello_stage"


def test_block_env_keeps_a_named_plugin_out(hello_site, tmp_path):
    result = _run_with(hello_site, tmp_path, SCHED_TRACE_BLOCK="hello,other")
    assert "'hello'" not in result.stdout
    assert not (tmp_path / "hello.out").exists()


def test_autoload_can_be_disabled_by_env(hello_site, tmp_path):
    result = _run_with(hello_site, tmp_path, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "'hello'" not in result.stdout


def test_a_rejected_config_is_not_handed_to_later_plugins(sched_trace_recorder):
    class Strict:
        def sched_trace_configure(self, config):
            if config.plugin_settings("strict2").get("port") == "x":
                raise sched_trace.ConfigError("port must be an integer", key="plugins.strict2.port")

    sched_trace.register(Strict(), name="strict2")
    with pytest.raises(sched_trace.ConfigError):
        sched_trace.configure(config={"plugins": {"strict2": {"port": "x"}}}, autoload=False)
    seen = []

    class Late:
        def sched_trace_configure(self, config):
            seen.append(config.plugin_settings("strict2"))

    sched_trace.register(Late())
    assert seen in ([], [{}])
