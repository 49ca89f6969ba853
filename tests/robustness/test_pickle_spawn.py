"""Traced callables pickle by reference, like the originals, so ``spawn`` still works."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest

import sched_trace
from tests.robustness import workload

MODULE = "tests.robustness.workload"


@sched_trace.stage("decorated_double", level=2)
def decorated_double(value: int) -> int:
    return 2 * value


def instrument_workload() -> None:
    sched_trace.instrument(f"{MODULE}:double", stage="double")
    sched_trace.instrument(f"{MODULE}:Stage.forward_one_chunk", stage="forward",
                           microbatch="chunk_id", rank={"pp_rank": "self.stage_index"})
    sched_trace.instrument(f"{MODULE}:Stage.build", stage="build")
    sched_trace.instrument(f"{MODULE}:Stage.scale", stage="scale")


def test_traced_functions_and_methods_pickle_to_themselves(sched_trace_recorder) -> None:
    instrument_workload()
    stage = workload.Stage(1)
    for traced in (decorated_double, workload.double):
        assert pickle.loads(pickle.dumps(traced)) is traced
    # methods looked up on the class bind anew on each access: equal, not identical
    assert pickle.loads(pickle.dumps(workload.Stage.forward_one_chunk)) == workload.Stage.forward_one_chunk
    assert pickle.loads(pickle.dumps(workload.Stage.build)) == workload.Stage.build
    assert pickle.loads(pickle.dumps(workload.Stage.scale)) == workload.Stage.scale
    assert pickle.loads(pickle.dumps(workload.Stage.scale))(2) == 6
    assert pickle.loads(pickle.dumps(workload.Stage.build))(4).stage_index == 4
    bound = pickle.loads(pickle.dumps(stage.forward_one_chunk))
    assert bound(2, 5) == stage.forward_one_chunk(2, 5) == 107
    assert [e.microbatch for e in sched_trace_recorder.stages("forward")] == [2, 2]


def test_a_pickled_traced_function_is_the_live_attribute_after_uninstrument(sched_trace_recorder) -> None:
    instrument_workload()
    data = pickle.dumps(workload.double)
    sched_trace.uninstrument()
    assert pickle.loads(data) is workload.double
    assert not hasattr(workload.double, "_self_probe")


@pytest.mark.parametrize("start_method", ["spawn"])
def test_traced_callables_cross_a_spawn_boundary(sched_trace_recorder, start_method: str) -> None:
    instrument_workload()
    context = multiprocessing.get_context(start_method)
    queue = context.Queue()
    stage = workload.Stage(3)
    calls = [(decorated_double, (4,)), (workload.double, (5,)), (stage.forward_one_chunk, (1, 10)),
             (workload.Stage.build, (2,)), (workload.Stage.scale, (7,))]
    for function, args in calls:
        process = context.Process(target=workload.run_in_child, args=(function, args, queue))
        process.start()
        result = queue.get(timeout=60)
        process.join(60)
        assert process.exitcode == 0
        if isinstance(result, workload.Stage):
            result = result.stage_index
        assert result == {decorated_double: 8, workload.double: 10, workload.Stage.build: 2,
                          workload.Stage.scale: 21}.get(function, 311)
    # the parent traced nothing it did not call itself
    assert sched_trace_recorder.events == []


def test_torch_multiprocessing_spawn_accepts_a_traced_entry_point(sched_trace_recorder, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    sched_trace.instrument(f"{MODULE}:double", stage="double")
    # torch pickles the function it is given; a traced function must survive that
    torch.multiprocessing.spawn(workload.double, args=(), nprocs=1)
    assert pickle.loads(pickle.dumps(workload.double)) is workload.double
