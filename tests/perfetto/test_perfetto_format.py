"""The native Perfetto file: parses with the protobuf definitions, tracks, slices, args, flows."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from sched_trace import _clock as clock, traceio
from sched_trace_perfetto import PerfettoPlugin

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")

BEGIN, END, COUNTER = 1, 2, 4


def load(path):
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    return trace


def annotations(track_event):
    out = {}
    for annotation in track_event.debug_annotations:
        if annotation.dict_entries:
            out[annotation.name] = {e.name: e.int_value for e in annotation.dict_entries}
        else:
            out[annotation.name] = getattr(annotation, annotation.WhichOneof("value"))
    return out


@pytest.fixture
def written(tmp_path, run_pipeline):
    plugin = run_pipeline(PerfettoPlugin(directory=str(tmp_path)))
    (path,) = tmp_path.glob("*.perfetto-trace")
    assert plugin.paths == [str(path)]
    return path, load(path)


def test_one_file_per_process_named_with_rank_and_pid(written):
    path, _ = written
    assert path.name.startswith("sched-trace-") and "-rank0-pid" in path.name


def test_rank_tracks_are_named_host_label_pp_dp_tp(written):
    _, trace = written
    names = {p.track_descriptor.name for p in trace.packet if p.HasField("track_descriptor")}
    host = next(json.loads(p.track_descriptor.description)["sched_trace_rank"]["host_id"]
                for p in trace.packet if p.track_descriptor.name.endswith("-PP2-DP0-TP0"))
    for pp in range(3):
        assert f"{host}:Scheduler-PP{pp}-DP0-TP0" in names
    processes = [p.track_descriptor for p in trace.packet if p.track_descriptor.HasField("process")]
    assert len(processes) == 1 and processes[0].process.pid > 0


def test_slices_pair_up_and_carry_microbatch_and_batch_ids(written):
    _, trace = written
    events = [p for p in trace.packet if p.HasField("track_event")]
    begins = [p for p in events if p.track_event.type == BEGIN]
    ends = [p for p in events if p.track_event.type == END]
    assert len(begins) == len(ends) == 2 * (2 * 2 * 3) + 2
    forwards = [annotations(p.track_event) for p in begins if p.track_event.name == "forward"]
    batch_ids = sorted({a["batch_id"] for a in forwards})  # per-process counter: two steps, two ids
    assert len(batch_ids) == 2
    assert {(a["batch_id"], a["microbatch"]) for a in forwards} == {(b, m) for b in batch_ids for m in (0, 1)}
    assert all(a["attrs"]["queue_depth"] in (1, 2) for a in forwards)
    steps = [p.track_event for p in begins if p.track_event.name == "step"]
    assert [list(t.categories) for t in steps] == [["batch"], ["batch"]]


def test_flows_follow_a_microbatch_from_pp_rank_to_pp_rank(written):
    _, trace = written
    track_pp = {p.track_descriptor.uuid: json.loads(p.track_descriptor.description)["sched_trace_rank"].get("pp_rank")
                for p in trace.packet if p.track_descriptor.description.startswith('{"sched_trace_rank"')}
    chains = defaultdict(list)
    for packet in sorted((p for p in trace.packet if p.track_event.type == BEGIN), key=lambda p: p.timestamp):
        for flow in packet.track_event.flow_ids:
            args = annotations(packet.track_event)
            chains[flow].append((packet.track_event.name, args["batch_id"], args["microbatch"],
                                 track_pp[packet.track_event.track_uuid]))
    assert len(chains) == 2 * 2 * 2  # (batch, micro-batch, direction)
    for chain in chains.values():
        name, batch_id, microbatch = chain[0][:3]
        assert all(link[:3] == (name, batch_id, microbatch) for link in chain)
        order = [link[3] for link in chain]
        assert order == ([0, 1, 2] if name == "forward" else [2, 1, 0])


def test_counters_for_batch_size_and_queue_depth(written):
    _, trace = written
    counter_tracks = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet
                      if p.track_descriptor.HasField("counter")}
    samples = defaultdict(list)
    for packet in trace.packet:
        if packet.track_event.type == COUNTER:
            samples[counter_tracks[packet.track_event.track_uuid].split()[-1]].append(packet.track_event.counter_value)
    assert samples["batch_size"] == [8, 8]
    assert sorted(set(samples["queue_depth"])) == [1, 2]


def test_clock_offset_recorded(written):
    path, trace = written
    snapshot = trace.packet[0].clock_snapshot
    clocks = {c.clock_id: c.timestamp for c in snapshot.clocks}
    assert clocks[1] - clocks[3] == clock.wall_offset_ns()
    read = traceio.read_trace(path)
    assert list(read.clock_offsets.values()) == [clock.wall_offset_ns()]


def test_file_reads_back_into_the_same_events(tmp_path, run_pipeline):
    from sched_trace import MemoryRecorder, register

    memory = MemoryRecorder()
    register(memory)
    plugin = run_pipeline(PerfettoPlugin(directory=str(tmp_path)))
    read = traceio.read_trace(plugin.paths[0])
    assert read.format == "perfetto"

    def key(e):
        return (e.kind, e.name, e.start_ns, e.end_ns, e.rank, e.microbatch, e.batch_id, e.batch_size,
                dict(e.attrs), e.span_id, e.parent_id, e.level)

    assert sorted(map(key, read.events), key=repr) == sorted(map(key, memory.events), key=repr)


def test_stats_count_written_slices(tmp_path, run_pipeline):
    plugin = run_pipeline(PerfettoPlugin(directory=str(tmp_path)))
    stats = plugin.sched_trace_collect_stats()
    assert stats["slices_written"] == stats["sent"] == stats["received"] == 26
    assert stats["dropped"] == stats["failed"] == 0 and stats["files"] == 1
