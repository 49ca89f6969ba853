"""Request lifecycle events: kind="request" targets, the TOML form, and request_event()."""

from __future__ import annotations

import pytest

import sched_trace
from sched_trace import ConfigError, InstrumentationError
from tests.requests import mini_engine
from tests.requests.mini_engine import Request, Scheduler

ENGINE = "tests.requests.mini_engine"
ARRIVED = dict(kind="request", phase="arrived", request_id="request.request_id",
               prompt_tokens="len(request.prompt_token_ids)")


@pytest.fixture
def recorder():
    recorder = sched_trace.MemoryRecorder()
    sched_trace.register(recorder)
    return recorder


def test_one_event_none_after_uninstrument_one_again_after_reinstrument(recorder) -> None:
    scheduler = Scheduler()
    handle = sched_trace.instrument(f"{ENGINE}:Scheduler.add_request", **ARRIVED)
    scheduler.add_request(Request("r1", [1, 2, 3], 2))
    [event] = recorder.requests()
    assert (event.kind, event.phase, event.request_id, event.prompt_tokens) == ("request", "arrived", "r1", 3)
    assert event.output_tokens is None and event.batch_id is None
    assert event.rank.pid > 0 and event.ts_ns > 0

    handle.uninstrument()
    assert Scheduler.add_request is vars(Scheduler)["add_request"]
    assert not hasattr(Scheduler.add_request, "_self_probe")
    scheduler.add_request(Request("r2", [1], 2))
    assert len(recorder.requests()) == 1

    sched_trace.instrument(f"{ENGINE}:Scheduler.add_request", **ARRIVED)
    scheduler.add_request(Request("r3", [1], 2))
    assert [e.request_id for e in recorder.requests()] == ["r1", "r3"]
    assert recorder.events == []  # request events never mix with the spans the pipeline analysis reads


LIFECYCLE = {
    "instrument": [
        {"target": f"{ENGINE}:Scheduler.step", "kind": "batch", "stage": "engine_step"},
        {"target": f"{ENGINE}:Scheduler.add_request", "kind": "request", "phase": "arrived",
         "request_id": "request.request_id", "prompt_tokens": "len(request.prompt_token_ids)"},
        {"target": f"{ENGINE}:Scheduler._start", "kind": "request", "phase": "scheduled",
         "request_id": "request.request_id"},
        {"target": f"{ENGINE}:Scheduler._append_output", "kind": "request", "phase": "first_token",
         "request_id": "request.request_id", "when": "not request.num_output_tokens"},
        {"target": f"{ENGINE}:Scheduler._free_request", "kind": "request", "phase": "finished",
         "request_id": "request.request_id", "output_tokens": "request.num_output_tokens",
         "status": "request.status.name", "aborted_statuses": ["FINISHED_ABORTED"]},
    ],
}


def test_a_config_reports_every_phase_once_per_request_inside_its_batch(recorder) -> None:
    sched_trace.configure(config=LIFECYCLE, autoload=False)
    requests = [Request(f"r{i}", range(i + 1), max_tokens=i + 2) for i in range(4)]
    mini_engine.run(Scheduler(), requests)
    steps = {b.batch_id for b in recorder.batches("engine_step")}
    for request in requests:
        events = recorder.requests(request.request_id)
        assert [e.phase for e in events] == ["arrived", "scheduled", "first_token", "finished"]
        arrived, scheduled, first, finished = events
        assert arrived.prompt_tokens == len(request.prompt_token_ids)
        assert finished.output_tokens == request.max_tokens == request.num_output_tokens
        assert finished.attrs["status"] == "FINISHED_STOPPED"
        assert arrived.batch_id is None  # added outside any step
        assert {scheduled.batch_id, first.batch_id, finished.batch_id} <= steps
        assert arrived.ts_ns <= scheduled.ts_ns <= first.ts_ns <= finished.ts_ns


def test_an_aborted_status_reports_phase_aborted(recorder) -> None:
    sched_trace.configure(config=LIFECYCLE, autoload=False)
    scheduler = Scheduler()
    request = Request("gone", [1, 2], max_tokens=10)
    scheduler.add_request(request)
    scheduler.step()
    scheduler.abort(request)
    assert [e.phase for e in recorder.requests("gone")] == ["arrived", "scheduled", "first_token", "aborted"]
    assert recorder.requests("gone", "aborted")[0].attrs["status"] == "FINISHED_ABORTED"
    assert recorder.requests("gone", "aborted")[0].output_tokens == 1


def test_request_event_reports_from_owned_code_with_the_open_batch(recorder) -> None:
    @sched_trace.batch("step")
    def step() -> None:
        sched_trace.request_event("first_token", 42, prompt_tokens=5)

    sched_trace.request_event("arrived", "a", prompt_tokens=5, model="tiny")
    step()
    arrived, first = recorder.requests()
    assert (arrived.phase, arrived.request_id, arrived.attrs["model"], arrived.batch_id) == ("arrived", "a", "tiny", None)
    assert (first.request_id, first.batch_id) == ("42", recorder.batches("step")[0].batch_id)
    with pytest.raises(InstrumentationError, match="phase must be one of arrived"):
        sched_trace.request_event("done", "a")


def test_level_zero_and_no_listener_cost_no_event(recorder) -> None:
    sched_trace.instrument(f"{ENGINE}:Scheduler.add_request", **ARRIVED)
    sched_trace.set_level(0)
    Scheduler().add_request(Request("r1", [1], 1))
    sched_trace.request_event("arrived", "r2")
    assert recorder.requests() == []
    sched_trace.set_level(1)
    Scheduler().add_request(Request("r3", [1], 1))
    assert [e.request_id for e in recorder.requests()] == ["r3"]


def test_a_raising_plugin_is_counted_and_others_still_get_the_event(recorder) -> None:
    class Broken:
        def sched_trace_request(self, event):
            raise RuntimeError("exporter bug")

    sched_trace.register(Broken(), name="broken")
    sched_trace.instrument(f"{ENGINE}:Scheduler.add_request", **ARRIVED)
    scheduler = Scheduler()
    scheduler.add_request(Request("r1", [1], 1))
    assert scheduler.waiting[0].request_id == "r1"
    assert len(recorder.requests()) == 1
    assert sched_trace.stats()["plugin_errors"]["broken"] == 1


def test_an_unreadable_request_id_is_counted_not_raised(recorder) -> None:
    sched_trace.instrument(f"{ENGINE}:Scheduler.add_request", kind="request", phase="arrived",
                           request_id="request.rid")
    Scheduler().add_request(Request("r1", [1], 1))
    assert recorder.requests() == []
    assert sched_trace.stats()["extract_missing"]["request_id='request.rid'"] == 1


@pytest.mark.parametrize("options, message", [
    (dict(kind="request", request_id="request.request_id"), "needs phase= one of arrived"),
    (dict(kind="request", phase="done", request_id="request.request_id"), "got 'done'"),
    (dict(kind="request", phase="arrived"), "needs request_id="),
    (dict(kind="request", phase="arrived", request_id="req.request_id"), "'req' is not a parameter"),
    (dict(kind="request", phase="arrived", request_id="request.request_id", microbatch="request"),
     "microbatch do not apply to kind='request'"),
    (dict(kind="request", phase="arrived", request_id="request.request_id", when="request.x + 1"), "when="),
    (dict(kind="request", phase="arrived", request_id="request.request_id", status="request.status",
          aborted_statuses=["X"]), "aborted_statuses= needs phase='finished'"),
    (dict(stage="add", phase="arrived"), "only apply to kind='request'"),
    (dict(kind="request", phase="arrived", request_id="request.request_id", phases="x"), "unknown option(s) phases"),
])
def test_bad_declarations_fail_at_once_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(sched_trace.SchedTraceError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("+", r"\+")):
        sched_trace.instrument(f"{ENGINE}:Scheduler.add_request", **options)


def test_bad_toml_request_entries_name_the_entry() -> None:
    bad = {"instrument": [{"target": f"{ENGINE}:Scheduler.add_request", "kind": "request",
                           "phase": "arived", "request_id": "request.request_id"}]}
    with pytest.raises(ConfigError, match=r"instrument\[0\].*got 'arived'"):
        sched_trace.config.parse(bad, "engine.toml")
    bad["instrument"][0].update(phase="arrived", when="len(")
    with pytest.raises(ConfigError, match=r"instrument\[0\].*when="):
        sched_trace.config.parse(bad, "engine.toml")


def test_the_shipped_vllm_profile_declares_every_request_phase() -> None:
    profile = sched_trace.config.load_profile("vllm")  # vLLM need not be installed to read it
    by_phase = {spec.options["phase"]: spec for spec in profile.instrument if spec.options.get("kind") == "request"}
    assert set(by_phase) == {"arrived", "queued", "scheduled", "first_token", "finished"}
    assert by_phase["finished"].options["aborted_statuses"] == ["FINISHED_ABORTED"]
    # once per request by construction: no target called per request per step, no `when` to evaluate
    assert by_phase["first_token"].target == "vllm.v1.core.kv_cache_manager:KVCacheManager.estimate_cached_tokens"
    assert not any("when" in spec.options for spec in by_phase.values())
    batches = [spec.target for spec in profile.instrument if spec.options.get("kind") == "batch"]
    assert batches == ["vllm.v1.engine.core:EngineCore.step", "vllm.v1.engine.core:EngineCore.step_with_batch_queue"]
