"""`sched-trace merge` and `convert` on files written by real, separate rank processes."""

from __future__ import annotations

import multiprocessing
from collections import Counter, defaultdict

import pytest

from sched_trace import RankInfo, StageEvent, traceio
from sched_trace.cli import main
from sched_trace.traceio import TraceFile

from .pipeline_worker import run_rank

WORLD, STEPS, MICROBATCHES = 3, 2, 3
PER_RANK = STEPS * (2 * MICROBATCHES + 1)  # forward + backward per micro-batch, one step slice


@pytest.fixture(scope="module")
def rank_files(tmp_path_factory):
    """Three spawned ranks, each writing Perfetto, Chrome JSON and OTLP-JSON; exit flushes."""
    pytest.importorskip("sched_trace_otel")
    root = tmp_path_factory.mktemp("ranks")
    directories = {name: str(root / name) for name in ("perfetto", "chrome", "otel")}
    context = multiprocessing.get_context("spawn")
    links: list[dict] = [{} for _ in range(WORLD)]
    for rank in range(WORLD - 1):  # activations flow down the pipeline, gradients back up
        links[rank + 1]["fwd_in"], links[rank]["fwd_out"] = context.Pipe(duplex=False)
        links[rank]["bwd_in"], links[rank + 1]["bwd_out"] = context.Pipe(duplex=False)
    processes = [context.Process(target=run_rank, args=(rank, WORLD, directories, STEPS, MICROBATCHES, links[rank]))
                 for rank in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    return {name: sorted((root / name).iterdir()) for name in directories}


def identities(events):
    """What a slice is apart from where the clock alignment moved it."""
    return Counter((e.rank.pid, e.kind, e.name, e.batch_id, e.microbatch, e.end_ns - e.start_ns) for e in events)


def shifts(merged, originals):
    """Per process, the set of (merged - recorded) start times: one value if moved rigidly."""
    start = {(e.rank.pid, e.kind, e.name, e.batch_id, e.microbatch): e.start_ns for e in originals}
    moved = defaultdict(set)
    for e in merged:
        moved[e.rank.pid].add(e.start_ns - start[(e.rank.pid, e.kind, e.name, e.batch_id, e.microbatch)])
    return moved


def test_each_rank_wrote_its_own_complete_file(rank_files):
    for name in ("perfetto", "chrome", "otel"):
        assert len(rank_files[name]) == WORLD
        for path in rank_files[name]:
            trace = traceio.read_trace(path)
            assert len(trace.events) == PER_RANK, (name, path)
            assert len(trace.clock_offsets) == 1
    assert [p.name.split("-rank")[1][0] for p in rank_files["perfetto"]] == ["0", "1", "2"]


def test_merge_keeps_every_slice_exactly_once(rank_files, tmp_path, capsys):
    out = tmp_path / "merged.perfetto-trace"
    assert main(["merge", *map(str, rank_files["perfetto"]), "-o", str(out)]) == 0
    assert f"{WORLD * PER_RANK} slices from {WORLD} files" in capsys.readouterr().out
    merged = traceio.read_trace(out)
    per_file = [e for path in rank_files["perfetto"] for e in traceio.read_trace(path).events]
    assert identities(merged.events) == identities(per_file)
    assert max(identities(merged.events).values()) == 1
    assert all(len(moved) == 1 for moved in shifts(merged.events, per_file).values())
    assert len({e.rank.pid for e in merged.events}) == WORLD


def test_merge_of_all_formats_drops_only_the_copies(rank_files, tmp_path, capsys):
    """The same ranks in three formats: one slice each, whichever file it came from."""
    out = tmp_path / "all.json"
    files = [str(p.parent) for p in (rank_files["perfetto"][0], rank_files["chrome"][0], rank_files["otel"][0])]
    assert main(["merge", *files, "-o", str(out)]) == 0
    assert f"{2 * WORLD * PER_RANK} duplicates dropped" in capsys.readouterr().out
    merged = traceio.read_trace(out)
    assert merged.format == "chrome" and len(merged.events) == WORLD * PER_RANK
    assert max(identities(merged.events).values()) == 1


def test_merged_flows_link_one_microbatch_across_processes(rank_files, tmp_path):
    out = tmp_path / "merged.perfetto-trace"
    assert main(["merge", str(rank_files["perfetto"][0].parent), "-o", str(out)]) == 0
    pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    trace = pb.Trace()
    trace.ParseFromString(out.read_bytes())
    pids = {}
    for packet in trace.packet:
        descriptor = packet.track_descriptor
        if descriptor.description.startswith('{"sched_trace_rank"'):
            pids[descriptor.uuid] = descriptor.name
    chains = defaultdict(list)
    for packet in sorted(trace.packet, key=lambda p: p.timestamp):
        for flow in packet.track_event.flow_ids:
            chains[flow].append((packet.track_event.name, pids[packet.track_event.track_uuid]))
    assert len(chains) == STEPS * MICROBATCHES * 2
    for chain in chains.values():
        order = [int(track.split("-PP")[1].split("-")[0]) for _, track in chain]
        assert order == ([0, 1, 2] if chain[0][0] == "forward" else [2, 1, 0])


def test_convert_otlp_json_to_perfetto(rank_files, tmp_path, capsys):
    out = tmp_path / "trace.perfetto-trace"
    assert main(["convert", *map(str, rank_files["otel"]), "-o", str(out)]) == 0
    converted = traceio.read_trace(out)
    assert converted.format == "perfetto"
    otlp = [e for path in rank_files["otel"] for e in traceio.read_trace(path).events]
    assert identities(converted.events) == identities(otlp)
    tracks = {e.rank.track_name.split(":", 1)[1] for e in converted.events if e.kind == "stage"}
    assert tracks == {f"Scheduler-PP{pp}-DP0-TP0" for pp in range(WORLD)}
    assert {e.microbatch for e in converted.events if e.name == "forward"} == set(range(MICROBATCHES))


def test_convert_refuses_what_is_not_otlp(rank_files, tmp_path, capsys):
    assert main(["convert", str(rank_files["perfetto"][0]), "-o", str(tmp_path / "x.perfetto-trace")]) == 2
    assert "is perfetto, expected otlp-json" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "missing.json")]) == 2
    assert "no such trace file" in capsys.readouterr().err


def _event(pid: int, start: int) -> StageEvent:
    rank = RankInfo("host-a", pid, pid, "Scheduler", pp_rank=0)
    return StageEvent("forward", 2, start, start + 100, rank, 0, 1, None, {}, None, 1, 0)


def test_merge_aligns_processes_of_one_host_on_their_shared_monotonic_clock():
    # Both processes saw the same monotonic instant 1_000, but their wall offsets differ by 50 ns.
    early = TraceFile("a", "perfetto", [_event(10, 1_000 + 5_000)], {("host-a", 10): 5_000})
    late = TraceFile("b", "perfetto", [_event(11, 1_000 + 5_050)], {("host-a", 11): 5_050})
    merged = traceio.merge_traces([early, late])
    assert [e.start_ns for e in merged.events] == [6_000, 6_000]
    assert merged.clock_offsets == {("host-a", 10): 5_000, ("host-a", 11): 5_000}
    unaligned = traceio.merge_traces([early, late], align=False)
    assert sorted(e.start_ns for e in unaligned.events) == [6_000, 6_050]
