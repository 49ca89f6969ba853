"""Trace contracts: each expectation passes on a good trace and names what broke on a bad one."""

from __future__ import annotations

import pytest

import sched_trace
from sched_trace.contracts import Contract, ContractError, Trace, rank_label

from .synthetic import lifecycle, pipeline, rank, span

PIPELINE = (Contract()
            .stages("pp_step", "pp_forward", ranks=["PP0", "PP1"])
            .nested("pp_forward", inside="pp_step")
            .microbatches("pp_forward", per="pp_step", expected=4)
            .attributes("pp_forward", "pp_mb_id", "bid")
            .attributes("pp_step", "schedule"))


def failure(contract: Contract, events) -> str:
    with pytest.raises(ContractError) as caught:
        contract.check(Trace(events))
    return str(caught.value)


def test_a_complete_pipeline_trace_holds() -> None:
    trace = PIPELINE.check(Trace(pipeline()))
    assert len(trace.named("pp_forward")) == 16


def test_rank_labels_name_parallel_ranks_and_stage_extras_never_processes() -> None:
    assert rank_label(rank(1, rank=1, world_size=2)) == "PP1"
    assert rank_label(rank(1, stage_index=3, rank=1)) == "PP1 stage_index=3"
    assert rank_label(rank(None, rank=2, world_size=4)) == "rank=2"
    assert rank_label(rank(None)) == "MainThread"


def test_a_stage_lost_on_one_rank_is_named_with_that_rank() -> None:
    message = failure(PIPELINE, pipeline(drop=lambda pp, step, mb: pp == 1))
    assert "stage 'pp_forward' missing on PP1: PP1 emitted pp_step x2; 'pp_forward' seen on PP0 stage_index=0" in message
    assert "pp_step 1 on PP1: no 'pp_forward' inside it (expected micro-batches 0, 1, 2, 3)" in message
    assert "captured 12 spans and 0 request events from 2 processes (ranks: PP0, PP0 stage_index=0, PP1)" in message


def test_micro_batch_coverage_names_the_step_rank_and_micro_batch() -> None:
    events = pipeline(drop=lambda pp, step, mb: (pp, step, mb) == (0, 1, 2))
    duplicate = next(e for e in events if e.name == "pp_forward" and e.rank.pp_rank == 1 and e.microbatch == 3)
    events.append(duplicate._replace(span_id=9999))
    message = failure(PIPELINE, events)
    assert "pp_step 2 on PP0: 'pp_forward' on PP0 stage_index=0: micro-batch 2 missing" in message
    assert "pp_step 1 on PP1: 'pp_forward' on PP1 stage_index=1: more than once: 3 x2" in message
    assert message.count("\n  - ") == 2


def test_a_stage_outside_its_batch_is_reported_with_its_parent() -> None:
    events = pipeline()
    stray = next(e for e in events if e.name == "pp_forward" and e.rank.pp_rank == 0)
    events[events.index(stray)] = stray._replace(parent_id=0)
    message = failure(Contract().nested("pp_forward", inside="pp_step"), events)
    assert "1 of 8 'pp_forward' spans on PP0 stage_index=0 are not inside a 'pp_step' (their parents: top level x1)" \
        in message


def test_missing_attribute_keys_are_counted_per_rank() -> None:
    events = [e._replace(microbatch=None) if e.name == "pp_forward" and e.rank.pp_rank == 1 else e
              for e in pipeline()]
    message = failure(Contract().attributes("pp_forward", "pp_mb_id"), events)
    assert "'pp_forward' on PP1 stage_index=1 lacks 'pp_mb_id' (8 of 8 spans)" in message
    assert "PP0" not in message.split("captured")[0]


def test_request_phases_complete_and_in_order() -> None:
    contract = Contract().request_phases(requests=3)
    contract.check(Trace(lifecycle("a") + lifecycle("b") + lifecycle("c")))
    broken = lifecycle("a") + lifecycle("b", ("arrived", "queued", "scheduled", "finished"))
    shuffled = lifecycle("c")
    shuffled[3] = shuffled[3]._replace(ts_ns=-1)  # first_token before arrived
    message = failure(contract, broken + shuffled)
    assert "request 'b': no first_token (reported: arrived, queued, scheduled, finished)" in message
    assert "request 'c' on PP0: phases out of order: first_token < arrived < queued < scheduled < finished" in message
    assert failure(Contract().request_phases(requests=2), lifecycle("a")).count("expected 2 requests, saw 1") == 1
    aborted = lifecycle("d", ("arrived", "queued", "scheduled", "first_token", "aborted"))
    contract.check(Trace(lifecycle("a") + lifecycle("b") + aborted))  # aborted ends a request too
    cut = lifecycle("e", ("arrived", "queued", "aborted"))
    assert "request 'e': no scheduled, first_token (reported: arrived, queued, aborted)" in failure(contract, cut)
    with pytest.raises(ValueError, match="unknown request phase"):
        Contract().request_phases("arrived", "done")


def test_an_empty_trace_says_that_nothing_was_emitted() -> None:
    message = failure(Contract().stages("pp_forward"), [])
    assert "nothing was emitted" in message


def test_many_violations_of_one_kind_are_capped() -> None:
    message = failure(Contract().microbatches("pp_forward", per="pp_step", expected=5), pipeline(steps=4))
    assert "... and 3 more like these" in message


def test_contracts_read_a_recorder_of_real_instrumentation(sched_trace_recorder) -> None:
    @sched_trace.batch("decode_step")
    def step(batch):
        for mb in range(2):
            run_batch(batch, mb)

    @sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch)")
    def run_batch(batch, mb_id):
        return len(batch)

    sched_trace.set_thread_info("Scheduler", pp_rank=1)
    step([1, 2])
    contract = (Contract().stages("run_batch_cpu", ranks=["PP1"]).nested("run_batch_cpu", inside="decode_step")
                .microbatches("run_batch_cpu", per="decode_step", expected=2)
                .attributes("run_batch_cpu", "pp_mb_id", "batch_size", "bid"))
    contract.check(sched_trace_recorder)
    assert "'run_batch_cpu' missing on PP0" in str(pytest.raises(ContractError, Contract().stages(
        "run_batch_cpu", ranks=["PP0"]).check, sched_trace_recorder).value)


def test_a_check_of_ones_own() -> None:
    contract = Contract().require(lambda trace: [] if len(trace.named("pp_step")) == 4 else ["wrong step count"])
    contract.check(Trace(pipeline()))
    assert "wrong step count" in failure(contract, pipeline(steps=1))


def test_a_contract_from_a_profile_expects_each_stage_it_declares_and_the_request_lifecycle() -> None:
    contract = Contract.from_profile("torch-pipelining", ranks=["PP0", "PP1"], level=2,
                                     skip=["pp_backward", "pp_backward_weight"])
    contract.check(Trace(pipeline()))
    message = failure(Contract.from_profile("torch-pipelining", level=2), pipeline())
    assert "stage 'pp_backward' was never emitted (emitted: pp_forward x16, pp_step x4)" in message
    assert "pp_p2p_post" not in message  # level 3
    requests = Contract.from_profile("vllm").violations(Trace(lifecycle("a")))
    assert any("stage 'engine_step' was never emitted" in v for v in requests)
    assert not any("request" in v for v in requests)  # arrived .. finished, all there
