"""One request, many ranks: the ids every rank derives alike, and the rule that picks the owner."""

from __future__ import annotations

from typing import Any

import pytest

from sched_trace import ConfigError
from sched_trace._events import RankInfo
from sched_trace.export import RequestOwner, rank_span_id, request_trace, run_id

TP = "00-0000000000000000000000000000abcd-00000000000000ef-01"


def rank(**keys: Any) -> RankInfo:
    return RankInfo("host", 1, keys.pop("tid", 2), "Scheduler", **keys)


def test_the_run_id_comes_from_the_environment_else_torchrun_else_is_made_and_passed_on(monkeypatch: Any) -> None:
    monkeypatch.setenv("SCHED_TRACE_RUN_ID", "given")
    assert run_id() == "given"
    monkeypatch.delenv("SCHED_TRACE_RUN_ID")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")  # torchrun's, the same on every rank of a job
    assert run_id() == "job-7"
    monkeypatch.delenv("SCHED_TRACE_RUN_ID")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default when none was given
    made = run_id()
    assert len(made) == 32 and run_id() == made
    import os

    assert os.environ["SCHED_TRACE_RUN_ID"] == made  # what the processes this one starts inherit


def test_request_ids_depend_on_run_and_request_and_keep_an_incoming_trace() -> None:
    trace_id, root, parent = request_trace("r1", run="a")
    assert (trace_id, root, parent) == request_trace("r1", run="a") and parent == 0
    assert request_trace("r1", run="b")[:2] != (trace_id, root) and request_trace("r2", run="a")[0] != trace_id
    assert request_trace("r1", TP, run="a") == (0xABCD, root, 0xEF)  # the caller's trace, under its span
    assert rank_span_id("r1", rank(pp_rank=0), "a") != rank_span_id("r1", rank(pp_rank=1, tid=3), "a")
    assert rank_span_id("r1", rank(pp_rank=0), "a") == rank_span_id("r1", rank(pp_rank=0), "a")


@pytest.mark.parametrize("rule, owners", [
    (None, {"pp0-tp0", "unknown"}),                 # the default: pp_rank 0 and tp_rank 0, or unknown
    ({"pp_rank": 1}, {"pp1-tp0", "unknown"}),
    ("pp_rank=1,tp_rank=0", {"pp1-tp0", "unknown"}),
    ({}, {"pp0-tp0", "pp1-tp0", "pp0-tp1", "unknown"}),
    ("any", {"pp0-tp0", "pp1-tp0", "pp0-tp1", "unknown"}),
])
def test_the_owner_rule(rule: Any, owners: set, monkeypatch: Any) -> None:
    monkeypatch.delenv("SCHED_TRACE_REQUEST_OWNER", raising=False)
    ranks = {"pp0-tp0": rank(pp_rank=0, tp_rank=0), "pp1-tp0": rank(pp_rank=1, tp_rank=0),
             "pp0-tp1": rank(pp_rank=0, tp_rank=1), "unknown": rank()}
    owner = RequestOwner.parse(rule)
    assert {name for name, info in ranks.items() if owner.owns(info)} == owners


def test_the_owner_rule_from_the_environment_and_its_errors(monkeypatch: Any) -> None:
    monkeypatch.setenv("SCHED_TRACE_REQUEST_OWNER", "pp_rank=3")
    assert RequestOwner.parse().rule == {"pp_rank": 3}
    with pytest.raises(ConfigError, match="SCHED_TRACE_REQUEST_OWNER.*'pp_rank'"):
        monkeypatch.setenv("SCHED_TRACE_REQUEST_OWNER", "pp_rank")
        RequestOwner.parse()
    with pytest.raises(ConfigError, match="request_owner.*'last'"):
        RequestOwner.parse({"pp_rank": "last"}, "sched_trace.toml", "plugins.otel.request_owner")
