"""Without CUDA (or without torch) the plugin loads, says so once, and stays off the hot path."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
import textwrap

import pytest

import sched_trace
from sched_trace._manager import get_manager
from sched_trace._stages import is_enabled
from sched_trace_cuda import HOOKS_NAME, CudaTimingPlugin, parse_settings

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="these tests describe a machine without CUDA")


@sched_trace.stage("cuda_cpu_only", level=2, microbatch="microbatch")
def cpu_only(microbatch: int) -> int:
    return microbatch * 2


@pytest.fixture
def cuda_plugin():
    plugin = CudaTimingPlugin()
    sched_trace.register(plugin, name="cuda")
    yield plugin
    sched_trace.shutdown()
    get_manager().forget_config()


def event_hook_owners() -> set[str]:
    manager = get_manager()
    return {owner for calls in (manager.stage_start, manager.stage_end, manager.batch_start,
                                manager.batch_end) for _, owner in calls}


def test_it_registers_reports_unavailable_and_logs_one_line(cuda_plugin, caplog):
    with caplog.at_level(logging.INFO, logger="sched_trace.cuda"):
        sched_trace.configure(level=9, autoload=False)
        sched_trace.configure(level=9, config={"plugins": {"cuda": {"stages": ["x"]}}}, autoload=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "sched_trace.cuda"]
    assert len(lines) == 1 and "GPU stage timing is off" in lines[0] and "without CUDA" in lines[0]
    stats = sched_trace.stats()["plugins"]["cuda"]
    assert stats["available"] == 0 and stats["recorded"] == 0 and stats["waiting"] == 0
    assert get_manager().get_plugin("cuda") is cuda_plugin


def test_the_scheduler_is_unaffected_and_nothing_is_recorded(cuda_plugin, sched_trace_recorder):
    sched_trace.configure(level=9, autoload=False)
    assert [cpu_only(mb) for mb in range(3)] == [0, 2, 4]
    assert [e.microbatch for e in sched_trace_recorder.stages("cuda_cpu_only")] == [0, 1, 2]
    assert not [e for e in sched_trace_recorder.events if e.name.endswith("/gpu")]
    assert sched_trace.stats()["plugins"]["cuda"]["recorded"] == 0
    assert sched_trace.stats()["plugin_errors"] == {}


def test_without_cuda_it_adds_no_event_hooks_so_stages_stay_free(cuda_plugin):
    sched_trace.configure(level=9, autoload=False)
    assert not event_hook_owners() & {"cuda", HOOKS_NAME, "cuda-waiter"}
    assert not is_enabled(2)  # nobody listens: a stage costs one comparison


def test_disabling_and_re_enabling_from_settings(cuda_plugin):
    sched_trace.configure(config={"plugins": {"cuda": {"enabled": False}}}, autoload=False)
    assert cuda_plugin.reason.startswith("disabled")
    sched_trace.configure(config={"plugins": {"cuda": {"enabled": True}}}, autoload=False)
    assert "without CUDA" in cuda_plugin.reason


@pytest.mark.parametrize("settings, key, shown", [
    ({"stages": "forward"}, "plugins.cuda.stages", "'forward'"),
    ({"stages": [""]}, "plugins.cuda.stages", "['']"),
    ({"suffix": ""}, "plugins.cuda.suffix", "''"),
    ({"max_pending": 0}, "plugins.cuda.max_pending", "0"),
    ({"poll_interval": 0}, "plugins.cuda.poll_interval", "0"),
    ({"expire_s": -1}, "plugins.cuda.expire_s", "-1"),
    ({"enabled": "no"}, "plugins.cuda.enabled", "'no'"),
    ({"stage": ["forward"]}, "plugins.cuda.stage", "did you mean 'stages'"),
])
def test_bad_settings_raise_config_error_naming_key_and_value(cuda_plugin, settings, key, shown):
    with pytest.raises(sched_trace.ConfigError) as info:
        sched_trace.configure(config={"plugins": {"cuda": settings}}, autoload=False)
    assert info.value.key == key and shown in str(info.value)


def test_defaults():
    settings = parse_settings({})
    assert settings.enabled and settings.stages == () and settings.suffix == "/gpu"


def test_the_entry_point_names_the_plugin_class():
    (entry_point,) = importlib.metadata.entry_points(group="sched_trace", name="cuda")
    assert entry_point.load() is CudaTimingPlugin


def run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_torch_is_never_imported_and_is_waited_for_until_the_program_imports_it():
    report = run_python("""
        import json, sys
        import sched_trace, sched_trace_cuda
        plugin = sched_trace_cuda.CudaTimingPlugin()
        sched_trace.register(plugin, name="cuda")
        sched_trace.configure(level=9, autoload=False)
        from sched_trace._stages import is_enabled

        before = dict(state=plugin.state, torch="torch" in sys.modules,
                      waiting=sched_trace.stats()["plugins"]["cuda"]["waiting"],
                      stages_traced=is_enabled(2))

        @sched_trace.stage("s", level=2)
        def s():
            return 1

        s()
        still = plugin.state
        import torch  # the post-import hook sees a CPU build of torch
        names = [name for name, _ in sched_trace._manager.get_manager().list_name_plugin()]
        print(json.dumps(dict(before=before, still=still, after=plugin.state, names=names)))
    """)
    # While waiting the plugin has no event hooks: stages cost one comparison.
    assert report["before"] == {"state": "waiting", "torch": False, "waiting": 1, "stages_traced": False}
    assert report["still"] == "waiting" and report["after"] == "unavailable"
    assert report["names"] == ["cuda"]


def test_without_torch_installed_it_loads_and_reports_unavailable():
    report = run_python("""
        import json, sys
        sys.modules["torch"] = None  # as if torch were not installed: import torch fails
        import sched_trace, sched_trace_cuda
        plugin = sched_trace_cuda.CudaTimingPlugin()
        sched_trace.register(plugin, name="cuda")
        sched_trace.configure(level=9, autoload=False)

        @sched_trace.stage("s", level=2)
        def s():
            return 1

        print(json.dumps(dict(result=s(), reason=plugin.reason,
                              stats=sched_trace.stats()["plugins"]["cuda"])))
    """)
    assert report["result"] == 1 and report["reason"] == "torch is not installed"
    assert report["stats"]["available"] == 0
