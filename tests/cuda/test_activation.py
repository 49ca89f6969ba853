"""Switching on when the program initialises CUDA, with torch's lazy-init hook simulated.

``sys.modules["torch"]`` is a stand-in with a CUDA build's version and the few
``torch.cuda`` calls the plugin makes (fakes.FakeCuda); the plugin, the core and
the recorder are real.
"""

from __future__ import annotations

import sys

import pytest

import sched_trace
from sched_trace._manager import get_manager
from sched_trace_cuda import HOOKS_NAME, CudaTimingPlugin

from .fakes import FakeCuda, fake_torch


@sched_trace.stage("activation_stage", level=2, microbatch="microbatch")
def stage(microbatch: int) -> int:
    return microbatch


@pytest.fixture
def cuda(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda))
    yield cuda
    sched_trace.shutdown()
    get_manager().forget_config()


def start(recorder=None) -> CudaTimingPlugin:
    plugin = CudaTimingPlugin()
    sched_trace.register(plugin, name="cuda")
    sched_trace.configure(level=9, autoload=False)
    return plugin


def test_timing_waits_for_the_program_to_initialise_cuda(cuda, sched_trace_recorder):
    plugin = start()
    assert plugin.state == "waiting" and len(cuda.queued) == 1
    stage(0)
    assert get_manager().get_plugin(HOOKS_NAME) is None and not cuda.created

    cuda.init()  # the program's first CUDA call runs the queued activation
    assert plugin.state == "active" and get_manager().get_plugin(HOOKS_NAME) is not None
    stage(1)
    sched_trace.flush(timeout=10.0)
    assert [e.microbatch for e in sched_trace_recorder.stages("activation_stage/gpu")] == [1]
    assert sched_trace.stats()["plugins"]["cuda"].items() >= {"available": 1, "recorded": 1, "resolved": 1}.items()


def test_already_initialised_cuda_is_timed_from_the_first_stage(cuda, sched_trace_recorder):
    cuda.initialized = True
    plugin = start()
    assert plugin.state == "active" and not cuda.queued
    stage(0)
    sched_trace.flush(timeout=10.0)
    assert len(sched_trace_recorder.stages("activation_stage/gpu")) == 1


def test_shutdown_and_reconfigure_do_not_queue_twice_or_activate_late(cuda):
    plugin = start()
    sched_trace.shutdown()
    get_manager().forget_config()
    cuda.init()  # after shutdown the queued call finds the plugin stopped
    assert plugin.state == "unconfigured" and get_manager().get_plugin(HOOKS_NAME) is None
    sched_trace.configure(level=9, autoload=False)
    assert plugin.state == "active"


def test_a_torch_without_lazy_call_falls_back_to_checking_on_stage_start(cuda, sched_trace_recorder):
    cuda._lazy_call = None  # as if torch had dropped its private hook
    plugin = start()
    assert plugin.state == "waiting" and get_manager().get_plugin("cuda-waiter") is not None
    stage(0)
    cuda.initialized = True
    stage(1)  # the waiter activates the plugin and times this stage
    sched_trace.flush(timeout=10.0)
    assert [e.microbatch for e in sched_trace_recorder.stages("activation_stage/gpu")] == [1]
    assert get_manager().get_plugin("cuda-waiter") is None


def test_a_plugin_unregistered_while_waiting_never_activates(cuda):
    plugin = start()
    sched_trace.unregister(plugin)
    cuda.init()
    assert plugin.state == "unconfigured" and get_manager().get_plugin(HOOKS_NAME) is None
