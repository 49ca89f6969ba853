"""One trace from many processes: children a test starts write their events where it reads them."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sched_trace
from sched_trace.contracts import Contract

from . import rank_worker

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(rank_worker.__file__)
PIPELINE = (Contract().stages("pp_step", "pp_forward", ranks=["PP0", "PP1"])
            .nested("pp_forward", inside="pp_step").microbatches("pp_forward", per="pp_step", expected=4))


def python(*args: str, env: dict) -> None:
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_subprocesses_that_inherit_the_environment_are_captured(sched_trace_capture) -> None:
    for pp in range(2):
        python(str(pp), "4", env=dict(os.environ))
    trace = PIPELINE.check(sched_trace_capture)
    pids = {e.rank.pid for e in trace.events}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_child_given_an_environment_of_its_own_gets_the_capture_added(sched_trace_capture) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_TRACE_")}
    python("1", "4", env=sched_trace_capture.environ(clean))
    python("0", "4", env=clean)  # not given it: invisible
    assert sched_trace_capture.trace().ranks() == ["PP1"]


def test_a_rank_that_ends_with_os_exit_loses_nothing(sched_trace_capture) -> None:
    for pp in range(2):
        python(str(pp), "4", "hard", env=dict(os.environ))
    PIPELINE.check(sched_trace_capture)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_children_are_captured(sched_trace_capture, method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    context = multiprocessing.get_context(method)
    children = [context.Process(target=rank_worker.main, args=(pp, 4, True)) for pp in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    trace = PIPELINE.check(sched_trace_capture)
    assert os.getpid() not in {e.rank.pid for e in trace.events}


def test_this_process_is_captured_too_and_a_fork_writes_its_own_file(sched_trace_capture) -> None:
    sched_trace.set_thread_info("Worker", pp_rank=0)
    rank_worker.step(4)
    rank_worker.step(4)
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    pid = os.fork()
    if pid == 0:  # the child: same plugins, its own file
        try:
            sched_trace.set_thread_info("Worker", pp_rank=1)
            rank_worker.step(4)
            rank_worker.step(4)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    trace = PIPELINE.check(sched_trace_capture)
    assert {e.rank.pid for e in trace.events} == {os.getpid(), pid}
    assert len(list(sched_trace_capture.directory.iterdir())) == 2


def test_live_attribute_values_travel_as_type_names_and_requests_as_ids(sched_trace_capture) -> None:
    class Req:
        def __init__(self, rid):
            self.rid = rid

    @sched_trace.stage("run_batch_cpu", level=4, requests="batch", attrs={"lock": lambda i, a, k: object()})
    def run_batch(batch):
        return len(batch)

    run_batch([Req("r1"), Req("r2")])
    (event,) = sched_trace_capture.trace().events
    assert dict(event.attrs) == {"requests": ("r1", "r2"), "lock": "<object>"}


def test_a_damaged_file_keeps_what_came_before_and_says_so(sched_trace_capture) -> None:
    sched_trace.set_thread_info("Worker", pp_rank=0)
    rank_worker.step(4)
    (path,) = sched_trace_capture.directory.iterdir()
    with path.open("ab") as handle:
        handle.write(b"\x10\x00\x00\x00" + b"not a pickle....")
    trace = sched_trace_capture.trace()
    assert len(trace.events) == 5
    assert "unreadable after 5 events" in trace.summary()
