"""The demo's real torch.distributed.pipelining run (gloo, 2 ranks), traced from outside:
every file it leaves has one track per rank thread, with each stage inside its step on
that track, and Holistic Trace Analysis finds the steps in the Chrome output.

One run, under ``sched-trace run`` with the torch-pipelining profile, writing Chrome JSON
per rank; ``sched-trace merge`` then writes both formats. The files are read with the
``perfetto`` package's protos and plain ``json``, and by HTA itself where .ci/backends/hta.sh
installed it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from sched_trace.cli import main

from .test_tracks import assert_nested, chrome_tracks, perfetto_tracks

pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]
HTA_PYTHON = REPO / ".venv-hta" / "bin" / "python"
STEPS, MICROBATCHES = 3, 2
STAGES = ("pp_forward", "pp_backward", "pp_p2p_post", "pp_p2p_wait")

CONFIG = """\
level = 3
profiles = ["torch-pipelining"]
block = ["otel", "prometheus", "cuda"]  # the Perfetto plugin alone

[plugins.perfetto]
directory = "{directory}"
format = "chrome"
"""


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("demo")
    (home / "sched_trace.toml").write_text(CONFIG.format(directory=home / "ranks"))
    # The files are read once the ranks exit: let exit wait for their exporter processes.
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHED_TRACE_EXIT_TIMEOUT": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "sched_trace.cli", "run", "--config", str(home / "sched_trace.toml"), "--",
         sys.executable, "-m", "sched_trace._demo.pipeline", "--ranks", "2", "--microbatches", str(MICROBATCHES),
         "--steps", str(STEPS), "--schedules", "1f1b", "--stage-ms", "2"],
        cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for out in ("merged.perfetto-trace", "merged.json"):
        assert main(["merge", str(home / "ranks"), "-o", str(home / out)]) == 0
    return home


def rank_files(home: Path) -> list[Path]:
    files = sorted((home / "ranks").glob("*.json"))
    assert len(files) == 2
    return files


@pytest.mark.torch
@pytest.mark.parametrize("which", ["per-rank", "merged"])
def test_chrome_one_track_per_rank_thread_with_stages_in_their_step(demo_files: Path, which: str) -> None:
    files = rank_files(demo_files) if which == "per-rank" else [demo_files / "merged.json"]
    tracks = 0
    for path in files:
        names, slices = chrome_tracks(path)
        per_name = defaultdict(list)
        for key, track_names in names.items():
            assert len(track_names) == 1
            per_name[track_names[0]].append(key)
        assert all(len(keys) == 1 for keys in per_name.values()), per_name  # no name on two tracks
        for key in names:
            track = [(s["name"], s["ts"], s["ts"] + s["dur"]) for s in slices[key]]
            for stage in STAGES:
                assert_nested(track, stage, "pp_step")
            forwards = [s for s in slices[key] if s["name"] == "pp_forward"]
            assert len(forwards) == STEPS * MICROBATCHES
            assert {s["args"]["rank_keys"]["stage_index"] for s in forwards} == {s["args"].get("rank_keys", {})
                                                                                 .get("rank") for s in forwards}
        tracks += len(names)
    assert tracks == 2  # one thread per rank process recorded


@pytest.mark.torch
def test_merged_perfetto_one_track_per_rank_thread_with_stages_in_their_step(demo_files: Path) -> None:
    descriptors, slices = perfetto_tracks(demo_files / "merged.perfetto-trace")
    assert len(slices) == 2
    names = sorted(descriptors[uuid].name for uuid in slices)
    assert [name.split(":", 1)[1] for name in names] == ["MainThread-PP0-DP0-TP0", "MainThread-PP1-DP0-TP0"]
    parents = {descriptors[uuid].parent_uuid for uuid in slices}
    assert len(parents) == 2  # each track under its own process
    for track in slices.values():
        for stage in STAGES:
            assert_nested(track, stage, "pp_step")
        assert sum(1 for s in track if s[0] == "pp_step") == STEPS


@pytest.mark.torch
@pytest.mark.skipif(not (REPO / ".venv-hta" / ".sched-trace-hta").exists(),  # written once HTA imports
                    reason="Holistic Trace Analysis not installed: run `bash .ci/backends/hta.sh`")
def test_holistic_trace_analysis_finds_the_steps(demo_files: Path) -> None:
    """HTA loads the per-rank Chrome files and numbers each event's iteration by ProfilerStep#N."""
    script = (
        "import sys, json\n"
        "from hta.trace_analysis import TraceAnalysis\n"
        "analysis = TraceAnalysis(trace_dir=sys.argv[1])\n"
        "out = {'steps': [int(s) for s in analysis.get_profiler_steps()], 'ranks': {}}\n"
        "symbols = analysis.t.symbol_table.sym_table\n"
        "for rank, frame in analysis.t.traces.items():\n"
        "    names = frame['name'].map(lambda i: symbols[i])\n"
        "    forward = frame[names == 'pp_forward']\n"
        "    out['ranks'][str(rank)] = sorted(int(i) for i in forward['iteration'])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(HTA_PYTHON), "-c", script, str(demo_files / "ranks")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    # HTA leaves out the last step (it may be cut short) and the events in it; every other
    # step's forwards are numbered with that step, on both ranks
    assert found["steps"] == list(range(1, STEPS))
    assert sorted(found["ranks"]) == ["0", "1"]
    for iterations in found["ranks"].values():
        assert iterations == [step for step in range(1, STEPS) for _ in range(MICROBATCHES)]
