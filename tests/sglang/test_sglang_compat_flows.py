"""sglang-compat OTLP-JSON read the way SGLang's converter reads it: request tracks and
flow arrows from each request's first-level slice to its previous one on the thread."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sched_trace
import sched_trace.export

from .converter_model import attr, convert

pytest.importorskip("sched_trace_otel")


@dataclass
class Req:
    rid: str


@dataclass
class Batch:
    reqs: list = field(default_factory=list)


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch.reqs)")
def run_batch(batch: Batch, mb_id: int) -> None:
    pass


@sched_trace.batch("decode_step", level=1, batch_size="len(batch.reqs)", requests="batch.reqs")
def decode_step(batch: Batch) -> None:
    for mb_id in range(2):
        run_batch(batch, mb_id)


# Request "a" runs in steps 0-2, "b" in 1-2, "c" in step 1 only.
STEPS = [["a"], ["a", "b", "c"], ["a", "b"]]


def traced_run(tmp_path: Path, **settings: Any) -> Path:
    from sched_trace_otel import OtelPlugin

    # This rank (pp_rank 1) writes the request roots here; by default the rank with pp_rank 0 does.
    plugin = OtelPlugin(directory=str(tmp_path / "otel"), request_owner={"pp_rank": 1}, **settings)
    sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=1, dp_rank=0)
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    try:
        for rids in STEPS:
            decode_step(Batch([Req(rid) for rid in rids]))
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(plugin)
    (path,) = (tmp_path / "otel").glob("*.jsonl")
    return path


@pytest.mark.parametrize("process", [True, False], ids=["exporter-process", "exporter-thread"])
def test_converter_draws_an_arrow_from_each_request_slice_to_the_next(tmp_path: Path, process: bool) -> None:
    converted = convert(traced_run(tmp_path, sglang_compat=True, process=process))
    assert sorted(attr(r, "rid") for r in converted.roots) == ["a", "b", "c"]  # one root per request
    assert set(converted.tracks.values()) == {f"{sched_trace.export.current_rank().host_id[:8]}:Scheduler-PP1-DP0-TP0"}
    # every drawn slice belongs to one request: the first-level ones are the step copies
    assert sorted(s["name"] for s in converted.first_level.values()) == ["decode_step"] * 6
    assert len(converted.drawn) == 6 * 3
    arrows = defaultdict(list)
    for source, target in converted.flows:
        assert attr(source, "rid") == attr(target, "rid")
        assert int(source["endTimeUnixNano"]) <= int(target["startTimeUnixNano"])  # earlier step to later
        arrows[attr(source, "rid")].append((attr(source, "bid"), attr(target, "bid")))
    bids = sorted({attr(s, "bid") for s in converted.first_level.values()})
    assert bids == sorted(bids) and len(bids) == 3
    assert dict(arrows) == {"a": [(bids[0], bids[1]), (bids[1], bids[2])], "b": [(bids[1], bids[2])]}


def test_without_sglang_compat_request_copies_link_only_to_the_batch_trace(tmp_path: Path) -> None:
    """The default layout has no request roots, so the converter finds nothing to draw."""
    converted = convert(traced_run(tmp_path, requests="spans"))
    assert converted.roots == [] and converted.flows == []
