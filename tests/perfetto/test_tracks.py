"""One track per rank thread: extra rank keys are slice arguments, not a track identity.

Read with the ``perfetto`` package's own protos and a plain ``json.load``, not with
sched-trace's readers, so the layout a viewer sees is what is checked.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sched_trace import ConfigError, traceio
from sched_trace._events import BatchEvent, RankInfo, StageEvent
from sched_trace_perfetto.settings import parse

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")

THREAD = RankInfo("vm", 100, 7, "MainThread", tp_rank=0, pp_rank=1, dp_rank=0,
                  extra=(("rank", 1), ("world_size", 2)))
STAGE = THREAD.replace(stage_index=1)  # what the torch-pipelining profile adds per call


def pipeline_step(start: int = 1_000_000) -> list:
    """pp_forward/pp_backward (with stage_index) inside pp_step (without), end order."""
    forward = StageEvent("pp_forward", 2, start + 10, start + 20, STAGE, 0, 1, None, {}, None, 2, 1)
    backward = StageEvent("pp_backward", 2, start + 30, start + 50, STAGE, 0, 1, None, {}, None, 3, 1)
    step = BatchEvent("pp_step", 1, start, start + 60, THREAD, None, 1, 4, {}, None, 1, 0)
    return [forward, backward, step]


def perfetto_tracks(path: Path) -> tuple[dict, dict]:
    """Rank tracks by uuid (descriptor) and their slices as (name, begin, end)."""
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    descriptors = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")}
    slices: dict[int, list] = defaultdict(list)
    open_slices: dict[int, list] = defaultdict(list)
    for packet in sorted((p for p in trace.packet if p.HasField("track_event")), key=lambda p: p.timestamp):
        event = packet.track_event
        if event.type == event.TYPE_SLICE_BEGIN:
            open_slices[event.track_uuid].append(packet)
        elif event.type == event.TYPE_SLICE_END:
            begin = open_slices[event.track_uuid].pop()
            slices[event.track_uuid].append((begin.track_event.name, begin.timestamp, packet.timestamp, begin))
    return descriptors, slices


def chrome_tracks(path: Path) -> tuple[dict, dict]:
    """Thread tracks by (pid, tid) with their names, and their X slices."""
    document = json.loads(path.read_text())
    names: dict[tuple, list] = defaultdict(list)
    slices: dict[tuple, list] = defaultdict(list)
    for record in document["traceEvents"]:
        if record["ph"] == "M" and record["name"] == "thread_name":
            names[(record["pid"], record["tid"])].append(record["args"]["name"])
        elif record["ph"] == "X":
            slices[(record["pid"], record["tid"])].append(record)
    return names, slices


def read_back(path: Path) -> list:
    return traceio.read_trace(path).events


def assert_nested(slices: list, inner: str, outer: str) -> None:
    """Every ``inner`` slice lies within an ``outer`` slice of the same track."""
    outers = [(s[1], s[2]) for s in slices if s[0] == outer]
    inners = [(s[1], s[2]) for s in slices if s[0] == inner]
    assert inners and outers
    for begin, end in inners:
        assert any(b <= begin and end <= e for b, e in outers), (inner, begin, end, outers)


def test_perfetto_one_track_per_thread_with_rank_keys_as_arguments(tmp_path: Path) -> None:
    path = tmp_path / "t.perfetto-trace"
    traceio.write_perfetto(pipeline_step(), path)
    assert path.read_bytes()[:2] == b"\n{"  # a first packet of 123 bytes: still not JSON
    assert traceio.detect_format(path) == "perfetto"
    descriptors, slices = perfetto_tracks(path)
    assert len(slices) == 1
    (uuid, track_slices), = slices.items()
    assert descriptors[uuid].name == "vm:MainThread-PP1-DP0-TP0"
    assert_nested(track_slices, "pp_forward", "pp_step")
    args = {s[0]: {a.name: a for a in s[3].track_event.debug_annotations} for s in track_slices}
    keys = {entry.name: entry.int_value for entry in args["pp_forward"]["rank_keys"].dict_entries}
    assert keys == {"rank": 1, "stage_index": 1, "world_size": 2}
    assert "stage_index" not in {e.name for e in args["pp_step"]["rank_keys"].dict_entries}
    # Read back, every event has the rank it was recorded with.
    assert {e.name: e.rank for e in read_back(path)} == {"pp_forward": STAGE, "pp_backward": STAGE, "pp_step": THREAD}


def test_chrome_one_track_per_thread_with_rank_keys_as_arguments(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    traceio.write_chrome(pipeline_step(), path)
    names, slices = chrome_tracks(path)
    assert names == {(100, 7): ["vm:MainThread-PP1-DP0-TP0"]}  # the real tid, once
    track = [(s["name"], s["ts"], s["ts"] + s["dur"]) for s in slices[(100, 7)]]
    assert_nested(track, "pp_forward", "pp_step")
    forward = next(s for s in slices[(100, 7)] if s["name"] == "pp_forward")
    assert forward["args"]["rank_keys"] == {"rank": 1, "stage_index": 1, "world_size": 2}
    assert {e.name: e.rank for e in read_back(path)} == {"pp_forward": STAGE, "pp_backward": STAGE, "pp_step": THREAD}


@pytest.mark.parametrize("suffix", [".perfetto-trace", ".json"])
def test_track_keys_ask_for_a_track_per_value(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    traceio.write_trace(pipeline_step(), path, track_keys=["stage_index"])
    if suffix == ".json":
        names, _ = chrome_tracks(path)
        got = sorted(n for track in names.values() for n in track)
    else:
        descriptors, slices = perfetto_tracks(path)
        got = sorted(descriptors[uuid].name for uuid in slices)
    assert got == ["vm:MainThread-PP1-DP0-TP0", "vm:MainThread-PP1-DP0-TP0 stage_index=1"]
    assert {e.name: e.rank for e in read_back(path)} == {"pp_forward": STAGE, "pp_backward": STAGE, "pp_step": THREAD}


def test_merge_keeps_one_track_per_thread(tmp_path: Path) -> None:
    """``sched-trace merge`` of two ranks' files, to both formats."""
    from sched_trace.cli import main

    other = RankInfo("vm", 101, 8, "MainThread", tp_rank=0, pp_rank=0, dp_rank=0, extra=(("rank", 0),))
    events = pipeline_step()
    moved = [e._replace(rank=other.replace(stage_index=0) if e.kind == "stage" else other) for e in events]
    traceio.write_perfetto(events, tmp_path / "r1.perfetto-trace")
    traceio.write_chrome(moved, tmp_path / "r0.json")
    for out in ("all.perfetto-trace", "all.json"):
        assert main(["merge", str(tmp_path / "r1.perfetto-trace"), str(tmp_path / "r0.json"),
                     "-o", str(tmp_path / out)]) == 0
    names, _ = chrome_tracks(tmp_path / "all.json")
    assert sorted(names) == [(100, 7), (101, 8)] and all(len(n) == 1 for n in names.values())
    descriptors, slices = perfetto_tracks(tmp_path / "all.perfetto-trace")
    assert sorted(descriptors[uuid].name for uuid in slices) == ["vm:MainThread-PP0-DP0-TP0",
                                                                  "vm:MainThread-PP1-DP0-TP0"]


@pytest.mark.parametrize("value, words", [
    ("stage_index", "expected a list"),
    ([""], "'' in [''] is not a rank key name"),
    (["pp_rank"], "'pp_rank' in ['pp_rank'] is always part of a track"),
])
def test_track_keys_are_validated(value: Any, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"track_keys": value}, "cfg.toml", environ={})
    assert words in str(caught.value) and "plugins.perfetto.track_keys" in str(caught.value)


def test_track_keys_from_the_environment() -> None:
    settings = parse({}, environ={"SCHED_TRACE_PERFETTO_TRACK_KEYS": "stage_index, ep_rank"})
    assert settings.track_keys == ("stage_index", "ep_rank")


@pytest.mark.parametrize("process", [True, False], ids=["exporter-process", "exporter-thread"])
@pytest.mark.parametrize("track_keys, tracks", [([], 1), (["stage_index"], 3)])
def test_the_plugin_draws_a_thread_as_one_track_unless_asked(tmp_path: Path, process: bool, track_keys: list,
                                                             tracks: int) -> None:
    """Through the plugin (settings to the exporter process too): stages that add a rank key."""
    import sched_trace
    from sched_trace_perfetto import PerfettoPlugin

    plugin = PerfettoPlugin(directory=str(tmp_path), process=process, track_keys=track_keys)
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=0, dp_rank=0, tp_rank=0)

    @sched_trace.stage("pp_forward", level=2, microbatch="mb", rank={"stage_index": "stage"})
    def forward(stage: int, mb: int) -> None:
        pass

    @sched_trace.batch("pp_step")
    def step() -> None:
        for mb in range(2):
            for stage in (0, 2):  # an interleaved rank runs two stages
                forward(stage, mb)

    try:
        step()
        step()
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(plugin)
    (path,) = tmp_path.glob("*.perfetto-trace")
    descriptors, slices = perfetto_tracks(path)
    assert len(slices) == tracks
    if tracks == 1:
        (track,) = slices.values()
        assert_nested(track, "pp_forward", "pp_step")
        keys = {tuple((e.name, e.int_value) for e in {a.name: a for a in s[3].track_event.debug_annotations}
                      ["rank_keys"].dict_entries if e.name == "stage_index") for s in track if s[0] == "pp_forward"}
        assert keys == {(("stage_index", 0),), (("stage_index", 2),)}
    else:
        names = sorted(descriptors[uuid].name.split(":", 1)[1] for uuid in slices)
        assert names == ["Scheduler-PP0-DP0-TP0", "Scheduler-PP0-DP0-TP0 stage_index=0",
                         "Scheduler-PP0-DP0-TP0 stage_index=2"]
    events = read_back(path)
    assert sorted(e.rank.extras["stage_index"] for e in events if e.name == "pp_forward") == [0] * 4 + [2] * 4
    assert [e.rank.extras.get("stage_index") for e in events if e.name == "pp_step"] == [None, None]
