"""keep_if: a span only when the call did work; idle calls counted, never reported.

The ground truth is the scheduler's own counters (tests/core/poll_scheduler.py): how
many polls found nothing, how many batches ran, and the clock read inside each call.
"""

from __future__ import annotations

import asyncio

import pytest

import sched_trace
from sched_trace import ExtractorError
from sched_trace.export import wall_offset_ns
from tests.core.poll_scheduler import Request, Scheduler

POLL = "tests.core.poll_scheduler:Scheduler"


def inbox() -> list:
    """What arrives at each poll: fresh requests (they are mutated as they run)."""
    return [[Request("a", 2)], [], [], [Request("b", 1), Request("c", 3)], [], [], [], [], [], []]



@pytest.fixture
def recorder():
    recorder = sched_trace.MemoryRecorder(starts=True)
    sched_trace.register(recorder)
    sched_trace.set_level(4)
    return recorder


def test_only_polls_that_returned_a_batch_are_spans_and_the_idle_ones_are_counted(recorder) -> None:
    sched_trace.instrument(f"{POLL}.get_next_batch_to_run", level=3, keep_if="result is not None")
    scheduler = Scheduler()
    scheduler.event_loop(inbox())

    kept = [e for e in recorder.events if e.name == "get_next_batch_to_run"]
    assert scheduler.idle_polls > 0 and scheduler.batches_run > 0
    assert len(kept) == 2 * scheduler.batches_run  # a start and an end event per batch, nothing else
    assert sched_trace.stats()["idle_calls"] == {"get_next_batch_to_run": scheduler.idle_polls}
    sched_trace.reset_stats()
    assert sched_trace.stats()["idle_calls"] == {}


def test_a_kept_call_s_start_event_comes_late_with_its_true_start_time(recorder) -> None:
    sched_trace.instrument(f"{POLL}.get_next_batch_to_run", level=3, keep_if="result is not None")
    scheduler = Scheduler()
    scheduler.event_loop(inbox())

    events = [e for e in recorder.events if e.name == "get_next_batch_to_run"]
    starts, ends = events[0::2], events[1::2]
    assert all(s.end_ns is None and e.end_ns is not None for s, e in zip(starts, ends))  # start, then end
    assert [s.span_id for s in starts] == [e.span_id for e in ends]
    for start, end, inside in zip(starts, ends, scheduler.call_times):
        assert start.start_ns == end.start_ns
        assert start.start_ns <= inside + wall_offset_ns() <= end.end_ns  # the clock read in the call


def test_a_condition_on_an_argument_keeps_only_receives_that_brought_requests(recorder) -> None:
    sched_trace.instrument(f"{POLL}.process_input_requests", level=2, keep_if="len(recv_reqs) > 0",
                           batch_size="len(recv_reqs)")
    scheduler = Scheduler()
    scheduler.event_loop(inbox())
    ends = [e for e in recorder.stages("process_input_requests") if e.end_ns is not None]
    assert [e.batch_size for e in ends] == [len(reqs) for reqs in inbox() if reqs]
    assert sched_trace.stats()["idle_calls"]["process_input_requests"] == scheduler.empty_receives


def test_a_kept_call_is_the_parent_of_what_ran_inside_it_delivered_in_order(recorder) -> None:
    sched_trace.instrument(f"{POLL}.event_loop", kind="batch", level=1)
    sched_trace.instrument(f"{POLL}.process_input_requests", level=2, keep_if="len(recv_reqs) > 0")
    sched_trace.instrument(f"{POLL}.add_request", level=3)
    Scheduler().event_loop(inbox())
    loop = recorder.batches("event_loop")[-1]
    names = [(e.name, e.end_ns is None) for e in recorder.events]
    receive_ids = {e.span_id for e in recorder.stages("process_input_requests")}
    adds = [e for e in recorder.stages("add_request") if e.end_ns is not None]
    assert len(receive_ids) == 2 and len(adds) == 3
    assert {e.parent_id for e in adds} <= receive_ids  # nested in the kept receive that ran them
    assert {e.parent_id for e in recorder.stages("process_input_requests")} == {loop.span_id}
    assert {e.batch_id for e in adds} == {loop.batch_id}
    first = names.index(("process_input_requests", True))  # its start event, delivered late
    assert names[first:first + 4] == [("process_input_requests", True), ("add_request", True),
                                      ("add_request", False), ("process_input_requests", False)]


def test_what_ran_inside_a_dropped_call_goes_to_the_span_around_it(recorder) -> None:
    @sched_trace.stage("inner", level=3)
    def inner():
        sched_trace.request_event("arrived", "r-inner")

    @sched_trace.batch("maybe_step", keep_if="result")
    def maybe_step(work):
        inner()
        return work

    @sched_trace.batch("outer_step")
    def outer_step(work):
        maybe_step(work)

    outer_step(False)
    outer_step(True)
    outer = [e for e in recorder.batches("outer_step") if e.end_ns is not None]
    kept = [e for e in recorder.batches("maybe_step") if e.end_ns is not None]
    inners = [e for e in recorder.stages("inner") if e.end_ns is not None]
    requests = recorder.requests(request_id="r-inner")
    assert len(outer) == 2 and len(kept) == 1 and len(inners) == 2 and len(requests) == 2
    # dropped: the inner stage and the request belong to the outer step, as if maybe_step were not traced
    assert (inners[0].parent_id, inners[0].batch_id) == (outer[0].span_id, outer[0].batch_id)
    assert requests[0].batch_id == outer[0].batch_id
    # kept: they belong to maybe_step, which belongs to the outer step
    assert (inners[1].parent_id, inners[1].batch_id) == (kept[0].span_id, kept[0].batch_id)
    assert requests[1].batch_id == kept[0].batch_id and kept[0].parent_id == outer[1].span_id
    assert sched_trace.stats()["idle_calls"] == {"maybe_step": 1}


def test_an_idle_batch_fires_no_hook_and_its_stages_are_delivered_with_it(recorder) -> None:
    sched_trace.instrument(f"{POLL}.event_loop", kind="batch", stage="loop", keep_if="self.batches_run > 0")
    sched_trace.instrument(f"{POLL}.run_batch", level=4)
    idle, busy = Scheduler(), Scheduler()
    idle.event_loop([[], []])
    busy.event_loop(inbox())
    [start, end] = recorder.batches("loop")
    runs = [e for e in recorder.stages("run_batch") if e.end_ns is not None]
    assert len(runs) == busy.batches_run and {(e.parent_id, e.batch_id) for e in runs} == {(end.span_id, end.batch_id)}
    assert recorder.events.index(start) == 0 and recorder.events[-1] == end
    assert sched_trace.stats()["idle_calls"] == {"loop": 1}


def test_a_call_that_raises_is_kept_with_its_error(recorder) -> None:
    sched_trace.instrument(f"{POLL}.failing_poll", keep_if="result is not None")
    with pytest.raises(RuntimeError, match="poll failed"):
        Scheduler().failing_poll()
    [start, end] = recorder.stages("failing_poll")
    assert isinstance(end.error, RuntimeError) and start.error is None


def test_generators_and_coroutines_decide_on_their_return_value(recorder) -> None:
    sched_trace.instrument(f"{POLL}.stream_batches", keep_if="result > 1")
    sched_trace.instrument(f"{POLL}.poll_async", keep_if="result is not None")
    scheduler = Scheduler()
    assert list(scheduler.stream_batches(1)) == [0] and list(scheduler.stream_batches(3)) == [0, 1, 2]
    assert asyncio.run(scheduler.poll_async()) is None
    scheduler.add_request(Request("a"))
    assert asyncio.run(scheduler.poll_async()) is not None
    assert len(recorder.stages("stream_batches")) == 2 and len(recorder.stages("poll_async")) == 2
    assert sched_trace.stats()["idle_calls"] == {"stream_batches": 1, "poll_async": 1}


def test_decorators_take_keep_if(recorder) -> None:
    @sched_trace.stage("owned_poll", level=2, keep_if="result")
    def poll(queue):
        return queue.pop() if queue else None

    @sched_trace.batch("owned_step", keep_if="budget > 0")
    def step(queue, budget):
        return poll(queue) if budget else None

    for queue, budget in (([1], 1), ([], 1), ([2, 3], 0), ([], 0)):
        step(queue, budget)
    assert len(recorder.stages("owned_poll")) == 2 and len(recorder.batches("owned_step")) == 4
    assert sched_trace.stats()["idle_calls"] == {"owned_poll": 1, "owned_step": 2}


def test_keep_if_reads_the_arguments_as_the_call_left_them(recorder) -> None:
    @sched_trace.stage("drain", keep_if="len(queue) > 0")
    def drain(queue):
        queue.clear()

    drain([1, 2])
    assert recorder.events == [] and sched_trace.stats()["idle_calls"] == {"drain": 1}


def test_the_toml_form(recorder, tmp_path) -> None:
    config = tmp_path / "sched_trace.toml"
    config.write_text(f'''
[[instrument]]
target = "{POLL}.get_next_batch_to_run"
level = 3
keep_if = "result is not None"
batch_size = "len(self.running)"
''')
    sched_trace.configure(config=str(config), autoload=False, level=4)
    scheduler = Scheduler()
    scheduler.event_loop(inbox())
    assert len(recorder.stages("get_next_batch_to_run")) == 2 * scheduler.batches_run
    assert sched_trace.stats()["idle_calls"]["get_next_batch_to_run"] == scheduler.idle_polls


@pytest.mark.parametrize("options, message", [
    (dict(keep_if="result is not"), "keep_if='result is not' is not a condition"),
    (dict(keep_if="len(recv) > 0"), "'recv' is not a parameter of the wrapped function"),
    (dict(keep_if="len(recv_reqs) > n"), "'n' is not a literal"),
    (dict(keep_if="recv_reqs and self.waiting"), "is not a value"),
    (dict(attrs={"n": "len(recv_reqs) if result"}), "'result' is the return value, known only after the call"),
])
def test_a_bad_condition_names_the_option_the_target_and_the_fix(options, message) -> None:
    with pytest.raises(ExtractorError) as caught:
        sched_trace.instrument(f"{POLL}.process_input_requests", **options)
    assert message in str(caught.value) and "process_input_requests" in str(caught.value)


def test_keep_if_belongs_to_spans_only() -> None:
    with pytest.raises(sched_trace.InstrumentationError, match="keep_if do not apply to kind='request'"):
        sched_trace.instrument(f"{POLL}.add_request", kind="request", phase="arrived",
                               request_id="request.rid", keep_if="result")


def test_a_thousand_idle_polls_report_nothing_and_count_a_thousand(recorder) -> None:
    sched_trace.instrument(f"{POLL}.get_next_batch_to_run", keep_if="result is not None")
    scheduler = Scheduler()
    for _ in range(1000):
        scheduler.get_next_batch_to_run()
    assert recorder.events == [] and scheduler.idle_polls == 1000
    assert sched_trace.stats()["idle_calls"]["get_next_batch_to_run"] == 1000


def test_a_conditional_attribute_is_only_on_the_batches_it_describes(recorder) -> None:
    sched_trace.instrument(f"{POLL}.run_batch", level=4, attrs={
        "extend_tokens": "batch.extend_num_tokens if batch.forward_mode.name in ('EXTEND', 'MIXED')",
        "mode": "batch.forward_mode.name"})
    scheduler = Scheduler()
    scheduler.event_loop(inbox())
    ends = [e for e in recorder.stages("run_batch") if e.end_ns is not None]
    assert {e.attrs["mode"] for e in ends} == {"EXTEND", "DECODE"}
    assert all(("extend_tokens" in e.attrs) == (e.attrs["mode"] == "EXTEND") for e in ends)
    assert [e.attrs["extend_tokens"] for e in ends if "extend_tokens" in e.attrs] == [2, 4]
