"""Events, RankInfo and reports are plain data: they pickle, round-trip and stay immutable.

Users gather events from ranks (``gather_object``, multiprocessing queues) and save
them for a later ``pipeline_report``; that needs every object sched-trace hands
out to pickle. The real-rank version is in test_torch_bubbles.py (gloo ranks,
``gather_object``).
"""

from __future__ import annotations

import dataclasses
import inspect
import multiprocessing
import pickle
from types import MappingProxyType

import pytest

import sched_trace
from sched_trace import _events as events_module
from sched_trace.analysis import pipeline_report
from sched_trace._events import NO_ATTRS, RankInfo, RecordedError

from .synthetic import one_f_one_b_order, simulate

RANK = RankInfo("host-a", 11, 12, "Scheduler", tp_rank=0, pp_rank=1, dp_rank=None,
                extra=(("rank", 1), ("world_size", 2)))
SAMPLE_FIELDS = {
    "name": "run_batch", "level": 2, "start_ns": 1_000, "end_ns": 2_000, "rank": RANK, "microbatch": 3,
    "batch_id": 7, "batch_size": 16, "attrs": MappingProxyType({"desc": "fwd_recv"}), "error": None,
    "span_id": 5, "parent_id": 4, "phase": "finished", "ts_ns": 1_500, "request_id": "req-1",
    "prompt_tokens": 12, "output_tokens": 30,
}


def event_classes() -> list[type]:
    """Every public event class in sched_trace.events (tuples with a ``kind``)."""
    return [cls for name, cls in vars(events_module).items()
            if inspect.isclass(cls) and issubclass(cls, tuple) and not name.startswith("_")
            and isinstance(getattr(cls, "kind", None), str) and hasattr(cls, "_fields")]


def sample(cls: type, **changes) -> tuple:
    return cls(**{field: changes.get(field, SAMPLE_FIELDS[field]) for field in cls._fields})


def round_trip(value):
    return pickle.loads(pickle.dumps(value))


def test_the_module_has_the_event_classes_we_expect():
    names = {cls.__name__ for cls in event_classes()}
    assert {"StageEvent", "BatchEvent"} <= names


@pytest.mark.parametrize("cls", event_classes(), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("attrs", [NO_ATTRS, MappingProxyType({"desc": "fwd_recv"}), {"ops": 2}],
                         ids=["shared-empty", "proxy", "dict"])
def test_every_event_class_pickles_and_round_trips(cls, attrs):
    event = sample(cls, attrs=attrs)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(event, protocol=protocol))
        assert back == event and type(back) is cls
        assert type(back.attrs) is type(attrs)
    assert round_trip(sample(cls, attrs=NO_ATTRS)).attrs is NO_ATTRS


@pytest.mark.parametrize("cls", event_classes(), ids=lambda cls: cls.__name__)
def test_events_stay_immutable(cls):
    event = sample(cls)
    with pytest.raises(AttributeError):
        event.rank = None
    with pytest.raises(AttributeError):
        event.anything = 1  # slotted: no instance dict
    with pytest.raises(TypeError):
        event.attrs["desc"] = "changed"  # the proxy is read-only, before and after pickling
    with pytest.raises(TypeError):
        round_trip(event).attrs["desc"] = "changed"


class NeedsTwoArguments(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def test_a_recorded_error_travels_as_plain_data_and_compares_equal():
    for error in (ValueError("bad batch"), NeedsTwoArguments(3, "oom"), KeyError("gone")):
        event = sample(sched_trace.StageEvent, error=error)
        back = round_trip(event)
        assert back == event  # the stand-in equals the exception it stands for
        assert isinstance(back.error, RecordedError) and back.error == error
        assert back.error.type_name == (type(error).__qualname__ if type(error).__module__ == "builtins"
                                        else f"{__name__}.NeedsTwoArguments")
        assert back.error.message == str(error) and round_trip(back) == back
    assert RecordedError("KeyError", "'gone'") != KeyError("other") and RecordedError("KeyError", "x") != "x"


def test_events_from_every_kind_of_target_round_trip(sched_trace_recorder):
    class Engine:
        pp_rank = 2

        @sched_trace.stage("forward", microbatch="mb", rank={"pp_rank": "self.pp_rank"}, attrs={"tag": "tag"})
        def forward(self, mb, tag="x"):
            return mb

        @sched_trace.stage("plain")
        def plain(self):
            return None

        @sched_trace.stage("failing")
        def failing(self):
            raise KeyError("gone")

        @sched_trace.batch("step", batch_size="len(batch)")
        def step(self, batch):
            self.forward(0)
            self.plain()
            with pytest.raises(KeyError):
                self.failing()

    Engine().step([1, 2, 3])
    recorded = list(sched_trace_recorder.events)
    assert {e.name for e in recorded} == {"forward", "plain", "failing", "step"}
    back = round_trip(recorded)
    assert back == recorded
    (failed,) = [b for b in back if b.error is not None]
    assert failed.name == "failing" and str(failed.error) == "KeyError: 'gone'"


def _echo(queue_in, queue_out):
    queue_out.put(queue_in.get())


def test_events_cross_a_multiprocessing_queue():
    events = simulate(2, 2, one_f_one_b_order, schedule="Schedule1F1B")
    context = multiprocessing.get_context("spawn")
    queue_in, queue_out = context.Queue(), context.Queue()
    child = context.Process(target=_echo, args=(queue_in, queue_out))
    child.start()
    queue_in.put(events)
    back = queue_out.get(timeout=120)  # hang guard only
    child.join(timeout=60)
    assert back == events
    assert pipeline_report(back) == pipeline_report(events)


def test_rank_info_and_reports_pickle_and_stay_frozen():
    assert round_trip(RANK) == RANK and hash(round_trip(RANK)) == hash(RANK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        RANK.pp_rank = 3
    report = pipeline_report(simulate(4, 8, one_f_one_b_order, steps=2, schedule="Schedule1F1B"), skip_steps=1)
    back = round_trip(report)
    assert back == report and back.to_dict() == report.to_dict() and str(back) == str(report)
    parts = [report, report.ranks[0], report.steps[0], report.steps[0].ranks[0], report.steps[0].ranks[0].phases[0],
             report.steps[0].critical_path, report.steps[0].critical_path.segments[0], report.schedules[0],
             report.latencies[0], report.ranks[0].lane]
    for part in parts:
        assert round_trip(part) == part
        field = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, field, None)


def test_every_result_type_of_the_analysis_is_a_frozen_dataclass():
    from sched_trace import analysis

    results = [getattr(analysis, name) for name in analysis.__all__ if dataclasses.is_dataclass(getattr(analysis, name))]
    assert {cls.__name__ for cls in results} >= {"PipelineReport", "RankSummary", "StepSummary", "RankStep"}
    for cls in results:
        assert cls.__dataclass_params__.frozen, cls.__name__
