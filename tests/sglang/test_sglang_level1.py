"""Level 1 (request phases and run_batch only) on a real SGLang server with PP=2: every event
still carries its scheduler's rank, although the spans that used to lend it are off. Then
the level raised from outside the running server (a level file every process of
``sched-trace run`` follows, ``sched-trace level 4``): both PP ranks' scheduler processes
trace their stages from then on, against a counter around SGLang's own ``run_batch``."""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from .server import NOT_RUNNABLE, VENV, GenerateRequest, SGLangServer, runnable

pytestmark = pytest.mark.skipif(not runnable(), reason=NOT_RUNNABLE)

LOAD = [GenerateRequest(f"l{i}", 12, 6) for i in range(3)]
RAISED = [GenerateRequest(f"h{i}", 12, 6) for i in range(3)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("sglang-level1")
    level_file = workdir / "level"  # absent: each process at --level 1 (and says so in level.applied)
    server = SGLangServer(workdir, pp_size=2, level=1, capture=True, count_steps=True,
                          env={"SCHED_TRACE_LEVEL_FILE": str(level_file)})
    try:
        server.start()
        answers = server.generate_many(LOAD)
        switch = {"before_ns": time.time_ns(), "steps": {pid: len(m) for pid, m in server.steps().items()},
                  "schedulers": server.scheduler_pids()}
        raised = subprocess.run([str(VENV / "bin" / "sched-trace"), "level", "4", "--file", str(level_file),
                                 "--wait", "120"], capture_output=True, text=True, timeout=300)
        switch.update(after_ns=time.time_ns(), command=raised)
        answers_raised = server.generate_many(RAISED)
    finally:
        server.stop()
    trace = server.trace()
    return {"answers": answers, "answers_raised": answers_raised, "trace": trace, "server": server,
            "switch": switch, "low": [e for e in trace.events if e.start_ns < switch["before_ns"]],
            "high": [e for e in trace.events if e.start_ns > switch["after_ns"]]}


def test_level_1_records_request_phases_and_batches_only(served: dict[str, Any]) -> None:
    trace, low = served["trace"], served["low"]
    assert {(e.kind, e.name) for e in low} == {("batch", "run_batch"), ("stage", "tokenize")}
    assert {r.phase for r in trace.requests} == {"arrived", "queued", "scheduled", "first_token", "finished"}
    assert len({e.rank.pid for e in low if e.name == "run_batch"}) == 2  # both PP ranks' scheduler processes
    # SGLang's own run_batch calls, counted around it: each one is a run_batch span
    counted = served["switch"]["steps"]
    assert Counter(e.rank.pid for e in low if e.name == "run_batch") == Counter(counted)


def test_at_level_1_every_request_event_has_its_ranks(served: dict[str, Any]) -> None:
    trace = served["trace"]
    missing = [(r.rank.pid, r.request_id, r.phase) for r in trace.requests
               if r.rank.pp_rank is None or r.rank.tp_rank is None]
    assert not missing
    pp_ranks = defaultdict(set)
    for r in trace.requests:
        pp_ranks[r.rank.pid].add(r.rank.pp_rank)
    assert sorted(map(sorted, pp_ranks.values())) == [[0], [1]]


def test_sched_trace_level_4_from_outside_traces_the_stages_of_both_pp_ranks_from_then_on(
        served: dict[str, Any]) -> None:
    switch, server = served["switch"], served["server"]
    command = switch["command"]
    assert command.returncode == 0, command.stdout + command.stderr
    schedulers = switch["schedulers"]
    assert len(schedulers) == 2
    for pid in schedulers:  # the command waited for both scheduler processes, and says so
        assert f"pid {pid} on {socket.gethostname()}: level 4" in command.stdout
    for rid in (r.rid for r in RAISED):  # SGLang served the second load in full
        assert served["answers_raised"][rid]["meta_info"]["completion_tokens"] == 6
    high = served["high"]
    steps = server.steps()
    after = {pid: len(modes) - switch["steps"].get(pid, 0) for pid, modes in steps.items()}
    # every run_batch call SGLang made after the switch is a run_batch span, per scheduler process
    assert Counter(e.rank.pid for e in high if e.name == "run_batch") == Counter(
        {pid: n for pid, n in after.items() if n})
    by_rank = defaultdict(set)
    for event in high:
        if event.kind == "stage":
            by_rank[event.rank.pp_rank].add(event.name)
    # the stages of levels 2 to 4, patched in the running server, on both PP ranks
    for pp_rank in (0, 1):
        assert {"get_next_batch_to_run", "process_batch_result", "run_batch_cpu"} <= by_rank[pp_rank], by_rank
