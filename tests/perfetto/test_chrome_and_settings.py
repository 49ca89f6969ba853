"""Chrome JSON for Holistic Trace Analysis, and [plugins.perfetto] validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import sched_trace
from sched_trace import ConfigError, _clock as clock, traceio
from sched_trace._manager import get_manager
from sched_trace_perfetto import PerfettoPlugin
from sched_trace_perfetto.settings import parse


def test_chrome_json_loads_with_distributed_rank(tmp_path, run_pipeline, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    plugin = run_pipeline(PerfettoPlugin(directory=str(tmp_path), format="chrome"))
    (path,) = tmp_path.glob("*.json")
    assert "-rank3-" in path.name and plugin.paths == [str(path)]
    document = json.loads(path.read_text())  # what HTA does: a plain json.load
    assert document["distributedInfo"]["rank"] == 3
    slices = [e for e in document["traceEvents"] if e["ph"] == "X" and e["cat"] != "user_annotation"]
    assert len(slices) == 26
    steps = [e for e in document["traceEvents"] if e["ph"] == "X" and e["cat"] == "user_annotation"]
    # HTA's iterations: one ProfilerStep#N over each batch, N its batch id (process-wide ids,
    # so earlier tests in this process shift them; what matters is that they match).
    batches = {(e["ts"], e["dur"]): e["args"]["batch_id"] for e in slices if e["name"] == steps[0]["args"]["sched_trace_batch"]}
    assert len(steps) == 2
    assert [e["name"] for e in steps] == [f"ProfilerStep#{batches[(e['ts'], e['dur'])]}" for e in steps]
    forward = next(e for e in slices if e["name"] == "forward")
    assert {"microbatch", "batch_id", "span_id"} <= set(forward["args"])
    tracks = {e["args"]["name"] for e in document["traceEvents"] if e.get("name") == "thread_name"}
    assert {t.split(":", 1)[1] for t in tracks} >= {f"Scheduler-PP{pp}-DP0-TP0" for pp in range(3)}
    assert document["sched_trace"]["clock_offsets"][0]["clock_offset_ns"] == clock.wall_offset_ns()


def test_chrome_timestamps_read_back_to_the_nanosecond(tmp_path, run_pipeline):
    memory = sched_trace.MemoryRecorder()
    sched_trace.register(memory)
    plugin = run_pipeline(PerfettoPlugin(directory=str(tmp_path), format="chrome"))
    read = traceio.read_trace(plugin.paths[0])
    assert read.format == "chrome"
    assert sorted((e.start_ns, e.end_ns) for e in read.events) == sorted((e.start_ns, e.end_ns) for e in memory.events)


def test_chrome_file_cut_short_still_reads(tmp_path, run_pipeline):
    plugin = run_pipeline(PerfettoPlugin(directory=str(tmp_path), format="chrome"))
    text = open(plugin.paths[0]).read()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.rindex("\n]}")])  # as if the process died before shutdown
    assert len(traceio.read_trace(cut).events) == 26


@pytest.mark.parametrize("table, key, words", [
    ({"format": "svg"}, "plugins.perfetto.format", "'svg' is not a format"),
    ({"directroy": "x"}, "plugins.perfetto.directroy", "did you mean 'directory'"),
    ({"capacity": 0}, "plugins.perfetto.capacity", "0 must be a positive integer"),
    ({"capacity": True}, "plugins.perfetto.capacity", "expected a int"),
    ({"counters": "queue_depth"}, "plugins.perfetto.counters", "expected a list"),
    ({"counters": [3]}, "plugins.perfetto.counters", "3 in [3] is not an attribute name"),
    ({"flows": "yes"}, "plugins.perfetto.flows", "expected a bool"),
])
def test_bad_settings_name_key_and_value(table, key, words):
    try:
        with pytest.raises(ConfigError) as info:
            sched_trace.configure(config={"plugins": {"perfetto": table}}, plugins=[PerfettoPlugin()], autoload=False)
    finally:
        get_manager().forget_config()  # the core keeps a rejected config (reported to the lead)
    assert info.value.key == key and words in str(info.value)


def test_environment_overrides_are_validated_too():
    with pytest.raises(ConfigError, match="SCHED_TRACE_PERFETTO_FLOWS.*'maybe'"):
        parse({}, environ={"SCHED_TRACE_PERFETTO_FLOWS": "maybe"})
    assert parse({"format": "chrome"}, environ={"SCHED_TRACE_PERFETTO_FORMAT": "perfetto"}).format == "perfetto"


def test_entry_point_and_config_file_and_nothing_lost_at_exit(tmp_path):
    """A plain program: plugin autoloaded by entry point, settings from TOML, no shutdown call."""
    out = tmp_path / "traces"
    (tmp_path / "sched-trace.toml").write_text(
        f'level = 4\n[plugins.perfetto]\ndirectory = "{out}"\nformat = "chrome"\n')
    program = textwrap.dedent("""
        import sched_trace
        sched_trace.configure(config="sched-trace.toml", plugins=(), autoload=True)

        @sched_trace.stage("decode", level=4, batch_size="len(reqs)")
        def decode(reqs):
            return len(reqs)

        for step in range(500):
            decode(list(range(step % 7)))
        # no flush, no shutdown: the exit hook must write everything
    """)
    env = {**os.environ, "SCHED_TRACE_BLOCK": "otel,prometheus,cuda"}
    subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, check=True, timeout=60)
    (path,) = out.glob("*.json")
    document = json.loads(path.read_text())
    assert sum(1 for e in document["traceEvents"] if e["ph"] == "X") == 500
