"""The C hot path (``sched_trace._speedups``) does what the Python template does.

Every test in tests/core runs on both forms (tests/core/conftest.py); these add what
only a C form can get wrong: the clock it reads, the references it holds, what it
leaves to the cyclic collector, and errors that must not be swallowed. Ground truth:
``_clock.now_ns`` read around the call, ``sys.getrefcount`` before and after, weak
references.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest

import sched_trace
from sched_trace import _clock, _native, _probe
from sched_trace.export import Exporter, ExporterPlugin
from sched_trace.recorder import BackgroundExporter, EventBuffer


class Batch:
    def __init__(self, reqs):
        self.reqs = reqs
        self.mode = "decode"


class Token:
    """A microbatch that is an object, not a number."""


class StepError(KeyError):
    """The scheduler's own error (a class of its own: weak references reach it)."""


class Request:
    def __init__(self, rid, status="FINISHED_STOPPED"):
        self.rid, self.prompt, self.output, self.status = rid, [1, 2, 3], [4, 5], status


class Worker:
    name = "w0"
    dp = 1

    def finish(self, req):
        return req.rid

    def step(self, batch, mb_id=0, *, note=None):
        if note == "raise":
            raise StepError("the scheduler's own error")
        return mb_id

    def poll(self, batch, mb_id=0, inside=False):
        """A busy poll: idle (nothing back) unless the batch has requests."""
        if inside:
            self.step(batch, mb_id)
        if mb_id == "raise":
            raise StepError("the poll's own error")
        return list(batch.reqs)


def trace_step(**options):
    sched_trace.instrument(f"{__name__}:Worker.step", stage="step", **options)


def test_a_span_lies_between_clock_readings_around_its_call(sched_trace_recorder):
    trace_step(microbatch="mb_id")
    before = _clock.now_ns()
    Worker().step(Batch([1]), 3)
    after = _clock.now_ns()
    (event,) = sched_trace_recorder.stages("step")
    assert before <= event.start_ns <= event.end_ns <= after


def test_a_forked_child_stamps_spans_on_its_own_clock(sched_trace_recorder):
    trace_step()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its clock offset is calibrated again after the fork
        ok = False
        try:
            before = _clock.now_ns()
            Worker().step(Batch([]))
            after = _clock.now_ns()
            event = sched_trace_recorder.stages("step")[-1]
            ok = before <= event.start_ns <= event.end_ns <= after
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    assert answer == b"1"


def assert_references_given_back(calls, watched, recorded, check=lambda: None, rounds=200):
    """``sys.getrefcount`` of each watched object is the same before and after ``rounds`` more
    rounds of ``calls``, once ``recorded`` (the recorder's list of events) lets its events go.
    One round first: the first plugin error is logged with its traceback, and the log keeps
    it. ``check`` looks at the recorded events before they go."""
    calls()
    del recorded[:]
    gc.collect()
    before = [sys.getrefcount(value) for value in watched]
    for _ in range(rounds):
        calls()
    check()
    del recorded[:]
    gc.collect()
    assert [sys.getrefcount(value) for value in watched] == before


def test_every_reference_is_given_back(sched_trace_recorder):
    class Broken:
        def sched_trace_stage_end(self, event):
            raise ValueError("exporter bug")

    sched_trace.register(Broken(), name="broken-for-references")
    trace_step(microbatch="mb_id", batch_size="len(batch.reqs)", attrs={
        "mode": "batch.mode", "who": "self.name", "size": "len(batch.reqs) if batch.mode == 'decode'"})
    worker, batch, token = Worker(), Batch([1, 2]), Token()
    watched = (worker, batch, batch.reqs, token, Worker.step)

    def calls():
        worker.step(batch, token)  # read in place
        worker.step(batch=batch, mb_id=token)  # by keyword: the extractors' slow path
        worker.step(None, token)  # unreadable: counted
        with pytest.raises(StepError):
            worker.step(batch, token, note="raise")

    assert_references_given_back(calls, watched, sched_trace_recorder.events)
    assert sched_trace.stats()["plugin_errors"]["broken-for-references"] == 804


def test_every_reference_is_given_back_by_a_keep_if_probe(sched_trace_recorder):
    sched_trace.instrument(f"{__name__}:Worker.poll", stage="poll", keep_if="result", microbatch="mb_id",
                           batch_size="len(batch.reqs)", attrs={"who": "self.name"})
    trace_step(microbatch="mb_id")
    worker, busy, idle, token = Worker(), Batch([1, 2]), Batch([]), Token()
    watched = (worker, busy, idle, busy.reqs, token)

    def calls():
        worker.poll(idle, token)  # idle: counted
        worker.poll(idle, token, inside=True)  # idle, a span inside: delivered to the span around
        worker.poll(busy, token)  # kept, nothing waiting: its events at once
        worker.poll(busy, token, inside=True)  # kept, a span inside waited for the decision
        with pytest.raises(StepError):
            worker.poll(idle, "raise")  # an error is never idle

    def check():
        assert len(sched_trace_recorder.stages("poll")) == 3 * 200
        assert len(sched_trace_recorder.stages("step")) == 2 * 200

    assert_references_given_back(calls, watched, sched_trace_recorder.events, check)
    assert sched_trace.stats()["idle_calls"]["poll"] == 2 * 201


def test_every_reference_is_given_back_by_a_request_probe(sched_trace_recorder):
    sched_trace.instrument(f"{__name__}:Worker.finish", kind="request", phase="finished", request_id="req.rid",
                           prompt_tokens="len(req.prompt)", output_tokens="len(req.output)", when="req.output",
                           status="req.status", aborted_statuses=["FINISHED_ABORTED"], rank={"dp_rank": "self.dp"},
                           attrs={"who": "self.name"})
    worker, token = Worker(), Token()
    done, aborted, silent, numbered = Request("r1"), Request("r2", "FINISHED_ABORTED"), Request("r3"), Request(token)
    silent.output = []  # ``when`` says no
    watched = (worker, done, aborted, silent, numbered, token)

    def calls():
        for request in (done, aborted, silent, numbered):
            assert worker.finish(request) is request.rid

    events = sched_trace_recorder.request_events

    def check():
        assert [(e.phase, e.prompt_tokens, e.output_tokens, e.rank.dp_rank) for e in events[:3]] == [
            ("finished", 3, 2, 1), ("aborted", 3, 2, 1), ("finished", 3, 2, 1)]
        assert [e.request_id for e in events[:3]] == ["r1", "r2", str(token)]
        assert len(events) == 3 * 200

    assert_references_given_back(calls, watched, events, check)


def test_a_conditional_attribute_is_read_only_where_its_condition_holds(sched_trace_recorder):
    from sched_trace._events import NO_ATTRS

    trace_step(attrs={"size": "len(batch.reqs) if batch.mode == 'decode'"})
    worker, decode, prefill = Worker(), Batch([1, 2]), Batch([1])
    prefill.mode = "prefill"
    worker.step(decode)
    worker.step(prefill)
    worker.step(None)  # the condition cannot read its value: it does not hold, and that is counted
    attrs = [event.attrs for event in sched_trace_recorder.stages("step")]
    assert attrs[0] == {"size": 2}
    assert attrs[1] is NO_ATTRS and attrs[2] is NO_ATTRS  # none held: the shared empty mapping
    assert sum(sched_trace.stats()["extract_missing"].values()) == 1


def test_plain_events_are_left_to_reference_counting(sched_trace_recorder, hot_path):
    trace_step(microbatch="mb_id")
    worker = Worker()
    worker.step(Batch([]), 1)
    worker.step(Batch([]), Token())
    with pytest.raises(StepError):
        worker.step(Batch([]), 2, note="raise")
    plain, holding_an_object, failed = sched_trace_recorder.stages("step")
    # CPython never untracks a tuple subclass; the C form leaves out events of plain values.
    assert gc.is_tracked(plain) is (hot_path == "python")
    assert gc.is_tracked(holding_an_object) and gc.is_tracked(failed)
    # An error's traceback refers to frames: that event stays collectable with them.
    error = weakref.ref(failed.error)
    del sched_trace_recorder.events[:], plain, holding_an_object, failed
    gc.collect()
    assert error() is None


def test_a_plugin_raising_base_exception_stops_the_caller(sched_trace_recorder):
    class Interrupting:
        def sched_trace_stage_end(self, event):
            raise KeyboardInterrupt

    sched_trace.register(Interrupting(), name="interrupting")
    trace_step()
    with pytest.raises(KeyboardInterrupt):
        Worker().step(Batch([]))
    assert "interrupting" not in sched_trace.stats()["plugin_errors"]


def test_calls_pass_through_while_torch_compile_traces(sched_trace_recorder):
    trace_step(microbatch="mb_id")
    before = _probe.compiling[0]
    try:
        _probe.compiling[0] = lambda: True
        assert Worker().step(Batch([]), 5) == 5
        assert sched_trace_recorder.stages("step") == []
        _probe.compiling[0] = lambda: False
        Worker().step(Batch([]), 6)
    finally:
        _probe.compiling[0] = before
    assert [event.microbatch for event in sched_trace_recorder.stages("step")] == [6]


def test_the_environment_chooses_the_python_template(hot_path):
    if hot_path == "python":
        pytest.skip("one run is enough")
    code = "from sched_trace import _native; print(_native.speedups is None)"
    pure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, SCHED_TRACE_PURE_PYTHON="1"))
    assert pure.stdout.strip() == "True"
    built = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != "SCHED_TRACE_PURE_PYTHON"})
    assert built.stdout.strip() == str(_native.speedups is None)


# --- the built-in exporters' hook: BackgroundExporter.append in C -----------------------------


class ListExporter(Exporter):
    batches: list = []

    def export(self, events):
        ListExporter.batches.append(list(events))


def test_an_exporter_plugin_hook_is_called_in_the_form_of_the_hot_path(hot_path):
    from sched_trace._manager import STAGE_END, get_manager

    plugin = ExporterPlugin(ListExporter, "listed", process=False, requests=False)
    sched_trace.register(plugin, name="listed")
    try:
        hook = get_manager().event_calls[STAGE_END][-1][0]
        assert (type(hook).__name__ == "Appender") == (hot_path == "c")
        ListExporter.batches = []
        trace_step(microbatch="mb_id")
        worker, batch = Worker(), Batch([1])
        for mb in range(50):
            worker.step(batch, mb)
        assert plugin.processor.flush(5.0)
        assert [event.microbatch for batch in ListExporter.batches for event in batch] == list(range(50))
        assert plugin.processor.stats()["dropped"] == 0
    finally:
        sched_trace.unregister(plugin)
        plugin.stop(5.0)


def make_appender(hot_path, capacity):
    """An Appender on a real EventBuffer whose Python path (``slow``) records what it is handed."""
    if hot_path == "python":
        pytest.skip("the C form's own test: one run is enough")
    buffer, slow = EventBuffer(capacity), []
    return _native.speedups.Appender(buffer, slow.append), buffer, slow


def test_the_c_append_takes_events_only_while_the_thread_runs_and_the_buffer_has_room(hot_path):
    appender, buffer, slow = make_appender(hot_path, capacity=3)
    appender("first")  # no thread yet: the Python path starts it
    assert (list(buffer._items), slow) == ([], ["first"])
    appender.started = True
    for event in ("a", "b", "c", "d", "e"):
        appender(event)
    assert (list(buffer._items), slow) == (["a", "b", "c"], ["first", "d", "e"])  # full: the Python path drops
    buffer.capacity = 4  # read on every call
    appender("f")
    assert list(buffer._items) == ["a", "b", "c", "f"]
    buffer._items, buffer.capacity = CountedItems(buffer._items), 10  # another type than when made
    appender("g")  # its own append
    assert (list(buffer._items), buffer._items.appended) == (["a", "b", "c", "f"], ["g"])
    with pytest.raises(TypeError, match="one positional argument"):
        appender("g", "h")
    with pytest.raises(TypeError, match="one positional argument"):
        appender(event="g")


class CountedItems(list):
    """A buffer's items of another type, keeping what was appended apart."""

    def __init__(self, items):
        super().__init__(items)
        self.appended = []

    def append(self, item):
        self.appended.append(item)


def test_a_buffer_without_its_slots_takes_the_python_path(hot_path):
    if hot_path == "python":
        pytest.skip("the C form's own test: one run is enough")

    class Unslotted:
        def __init__(self):
            self.capacity, self._items = 10, []

    slow = []
    appender = _native.speedups.Appender(Unslotted(), slow.append)
    appender.started = True
    appender("x")
    assert slow == ["x"]


def test_the_c_append_follows_the_exporter_thread(hot_path):
    exported = []
    exporter = BackgroundExporter(exported.extend, name="follow", capacity=10)
    appender = exporter._appender
    if hot_path == "python":
        assert appender is None
        return
    assert not appender.started
    appender(1)
    assert appender.started  # the first event started the thread
    exporter.shutdown(5.0)
    assert not appender.started and exported == [1]
    appender(2)  # after a shutdown the next event starts it again
    assert appender.started
    assert exporter.flush(5.0) and exported == [1, 2]
    exporter.shutdown(5.0)


def test_every_reference_is_given_back_by_the_c_append(hot_path):
    appender, buffer, slow = make_appender(hot_path, capacity=2)
    appender.started = True
    event, recorded = ("an", "event"), []

    def calls():
        for _ in range(3):  # two to the buffer, one to the Python path
            appender(event)
        recorded.extend(buffer.drain(10))
        recorded.extend(slow)
        del slow[:]

    assert_references_given_back(calls, (event, buffer, buffer._items), recorded)
