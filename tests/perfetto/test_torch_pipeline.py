"""Real torch.distributed.pipelining ranks (gloo): per-rank Perfetto files merge into one
timeline whose flows follow each micro-batch across the pipeline, as the schedule ran it."""

from __future__ import annotations

import multiprocessing
from collections import defaultdict

import pytest

from sched_trace import traceio
from sched_trace.cli import main

from .torch_worker import free_port, run_rank

pytest.importorskip("torch")
pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")

WORLD, MICROBATCHES, STEPS = 2, 3, 2


@pytest.mark.torch
@pytest.mark.parametrize("schedule", ["ScheduleGPipe", "Schedule1F1B"])
def test_torch_ranks_merge_with_flows_across_the_pipeline(tmp_path, schedule):
    directory = tmp_path / "perfetto"
    context = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [context.Process(target=run_rank, args=(r, WORLD, port, str(directory), schedule, MICROBATCHES, STEPS))
             for r in range(WORLD)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(120)
        assert process.exitcode == 0
    files = sorted(directory.iterdir())
    assert [f.name.split("-rank")[1][0] for f in files] == ["0", "1"]

    out = tmp_path / "merged.perfetto-trace"
    assert main(["merge", str(directory), "-o", str(out)]) == 0
    merged = traceio.read_trace(out).events
    per_file = sum(len(traceio.read_trace(f).events) for f in files)
    assert len(merged) == per_file
    counts = defaultdict(int)
    for event in merged:
        counts[(event.name, event.rank.pp_rank)] += 1
    for pp in range(WORLD):
        assert counts[("pp_forward", pp)] == counts[("pp_backward", pp)] == STEPS * MICROBATCHES
        assert counts[("pp_step", pp)] == STEPS

    trace = pb.Trace()
    trace.ParseFromString(out.read_bytes())
    track_name = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet}
    chains = defaultdict(list)
    for packet in sorted(trace.packet, key=lambda p: p.timestamp):
        for flow in packet.track_event.flow_ids:
            chains[flow].append((packet.track_event.name, track_name[packet.track_event.track_uuid]))
    assert len(chains) == 2 * STEPS * MICROBATCHES
    for chain in chains.values():
        order = [int(track.split("-PP")[1].split("-")[0]) for _, track in chain]
        assert order == ([0, 1] if chain[0][0] == "pp_forward" else [1, 0])
