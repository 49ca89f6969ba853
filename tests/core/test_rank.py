"""Rank identity: explicit per thread, auto-detected from the environment and torch."""

from __future__ import annotations

import threading

import pytest

import sched_trace
from sched_trace import _rank as rank


@sched_trace.stage("tick", level=1)
def tick():
    pass


def test_set_thread_info_labels_every_later_event_on_that_thread(sched_trace_recorder):
    def scheduler_thread():
        sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=1, dp_rank=2, ep_rank=3)
        tick()

    thread = threading.Thread(target=scheduler_thread)
    thread.start()
    thread.join()
    tick()  # main thread: not labelled
    labelled, plain = sched_trace_recorder.events
    assert (labelled.rank.thread_label, labelled.rank.tp_rank, labelled.rank.pp_rank, labelled.rank.dp_rank) == (
        "Scheduler", 0, 1, 2)
    assert labelled.rank.extras["ep_rank"] == 3
    assert labelled.rank.track_name.endswith(":Scheduler-PP1-DP2-TP0")
    assert plain.rank.thread_label == "MainThread" and plain.rank.pp_rank is None
    assert labelled.rank.tid != plain.rank.tid


def test_environment_supplies_ranks(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("SCHED_TRACE_PP_RANK", "1")
    info = rank.detect()
    assert (info.pp_rank, info.extras["rank"], info.extras["world_size"]) == (1, 5, 8)


def test_torch_distributed_rank_is_detected_once_initialised(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        rank.refresh()
        assert rank.current().extras["world_size"] == 1
        assert rank.current().extras["rank"] == 0
    finally:
        dist.destroy_process_group()
        rank.refresh()


def test_traceparent_round_trip():
    value = rank.format_traceparent(0xABC, 0x123, sampled=True)
    assert value == "00-00000000000000000000000000000abc-0000000000000123-01"
    assert rank.parse_traceparent(value) == (0xABC, 0x123, 1)
    assert rank.parse_traceparent("00-" + "0" * 32 + "-0000000000000123-01") is None
    assert rank.parse_traceparent("garbage") is None


def test_ranks_appear_once_the_process_group_is_initialised(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import torch.distributed as dist

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rank.refresh()
    assert "world_size" not in rank.current().extras
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store2", rank=0, world_size=1)
    try:
        rank._local.recheck_at = 0  # what a second of waiting would do
        assert rank.current().extras["world_size"] == 1
    finally:
        dist.destroy_process_group()
        rank.refresh()
