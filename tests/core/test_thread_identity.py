"""Rank identity belongs to the thread: kind="thread", set_thread_info, and request events.

A scheduler object knows its own ranks (ground truth: the values it was built with);
every event its thread reports afterwards must carry them, at every level.
"""

from __future__ import annotations

import threading

import pytest

import sched_trace
from sched_trace import _rank
from tests.core.poll_scheduler import Request, Scheduler

POLL = "tests.core.poll_scheduler:Scheduler"
THREAD = dict(kind="thread", thread_label="Scheduler",
              rank={"pp_rank": "self.pp_rank", "tp_rank": "self.tp_rank", "dp_rank": "self.dp_rank"})
ARRIVED = dict(kind="request", phase="arrived", request_id="request.rid")


@pytest.fixture
def recorder():
    recorder = sched_trace.MemoryRecorder()
    sched_trace.register(recorder)
    return recorder


def in_a_thread(function):
    """Run ``function`` on a thread of its own (so its identity is its own) and return its result."""
    found = []
    thread = threading.Thread(target=lambda: found.append(function()))
    thread.start()
    thread.join()
    return found[0]


@pytest.mark.parametrize("level", [1, 2, 4])
def test_after_the_constructor_every_event_of_the_thread_carries_its_ranks_at_every_level(recorder, level) -> None:
    sched_trace.instrument(f"{POLL}.__init__", **THREAD)
    sched_trace.instrument(f"{POLL}.add_request", **ARRIVED)
    sched_trace.instrument(f"{POLL}.event_loop", kind="batch", level=1)
    sched_trace.instrument(f"{POLL}.run_batch", level=4)
    sched_trace.set_level(level)

    def serve():
        scheduler = Scheduler(pp_rank=1, tp_rank=3, dp_rank=2)
        scheduler.event_loop([[Request("r1")], []])
        return threading.get_native_id()

    tid = in_a_thread(serve)
    events = recorder.events + recorder.request_events
    assert recorder.request_events and len(recorder.events) == (3 if level >= 4 else 1)  # two batches run r1
    assert {(e.rank.thread_label, e.rank.pp_rank, e.rank.tp_rank, e.rank.dp_rank, e.rank.tid) for e in events} \
        == {("Scheduler", 1, 3, 2, tid)}


def test_the_identity_is_the_calling_thread_s_alone(recorder) -> None:
    identity = sched_trace.instrument(f"{POLL}.__init__", **THREAD)
    sched_trace.instrument(f"{POLL}.add_request", **ARRIVED)
    ranks = in_a_thread(lambda: (Scheduler(pp_rank=1), _rank.current())[1])
    assert (ranks.thread_label, ranks.pp_rank) == ("Scheduler", 1)
    assert _rank.current().thread_label != "Scheduler"  # this thread built nothing
    identity.uninstrument()
    Scheduler(pp_rank=4).add_request(Request("here"))
    [event] = recorder.request_events
    assert event.rank.pp_rank is None


def test_request_events_take_the_thread_s_rank_not_an_enclosing_span_s(recorder) -> None:
    sched_trace.set_thread_info("Scheduler", pp_rank=0, tp_rank=0)
    sched_trace.instrument(f"{POLL}.process_input_requests", level=2, rank={"pp_rank": "self.pp_rank"})
    sched_trace.instrument(f"{POLL}.add_request", **ARRIVED)
    Scheduler(pp_rank=5).process_input_requests([Request("r1")])
    [span] = recorder.stages("process_input_requests")
    [request] = recorder.request_events
    assert span.rank.pp_rank == 5 and (request.rank.pp_rank, request.rank.tp_rank) == (0, 0)


def test_the_label_defaults_to_the_class_and_unreadable_ranks_fall_back_to_the_environment(
        recorder, monkeypatch) -> None:
    monkeypatch.setenv("SCHED_TRACE_TP_RANK", "7")
    sched_trace.instrument(f"{POLL}.__init__", kind="thread", rank={"pp_rank": "self.pp_rank",
                                                                   "tp_rank": "self.no_such_rank"})
    info = in_a_thread(lambda: (Scheduler(pp_rank=1), _rank.current())[1])
    assert (info.thread_label, info.pp_rank, info.tp_rank) == ("Scheduler", 1, 7)


def test_the_toml_form_and_its_checks(recorder, tmp_path) -> None:
    config = tmp_path / "sched_trace.toml"
    config.write_text(f'''
[[instrument]]
target = "{POLL}.__init__"
kind = "thread"
thread_label = "Scheduler"
rank = {{ pp_rank = "self.pp_rank", tp_rank = "self.tp_rank" }}
''')
    sched_trace.configure(config=str(config), autoload=False)
    info = in_a_thread(lambda: (Scheduler(pp_rank=1, tp_rank=2), _rank.current())[1])
    assert (info.thread_label, info.pp_rank, info.tp_rank) == ("Scheduler", 1, 2)
    with pytest.raises(sched_trace.ConfigError, match="microbatch only apply to kind='stage' or 'batch'"):
        sched_trace.configure(config={"instrument": [{"target": f"{POLL}.__init__", "kind": "thread",
                                                      "microbatch": "x"}]}, autoload=False)


def test_uninstrument_leaves_the_constructor_as_it_was(recorder) -> None:
    original = vars(Scheduler)["__init__"]
    handle = sched_trace.instrument(f"{POLL}.__init__", **THREAD)
    assert vars(Scheduler)["__init__"] is not original
    handle.uninstrument()
    assert vars(Scheduler)["__init__"] is original
