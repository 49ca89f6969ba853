"""The SGLang-style serving example, traced end to end with zero code edits.

Each run is a real ``sched-trace run -- python -m examples.serving`` in a
subprocess: spawned scheduler processes per PP rank, gloo send/recv, a client
whose requests carry ``traceparent``. A test-only ``sitecustomize`` (chained after
sched-trace's bootstrap) records every event of every process to JSON lines, so
the core checks need no exporter plugin; the plugin checks skip cleanly when a
plugin is not installed.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sched_trace.contracts import Contract, Trace

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "serving"
CONFIG = EXAMPLE / "sched_trace.toml"
RECORDER_SITE = Path(__file__).resolve().parent / "recorder_site"
NUM_REQUESTS = 12
PP_SIZE = 2
ARGS = ["--pp-size", str(PP_SIZE), "--num-requests", str(NUM_REQUESTS), "--max-new-tokens", "6",
        "--max-running-requests", "4", "--hidden-size", "128", "--num-layers", "2"]


def _environment(events_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(RECORDER_SITE), str(REPO)])
    env["SERVING_TEST_EVENTS"] = str(events_dir)
    env["SCHED_TRACE_CAPTURE_DIR"] = str(events_dir.parent / "capture")  # for the trace contract
    return env


def _sched_trace_cli() -> list[str]:
    return [sys.executable, "-c", "import sys; from sched_trace.cli import main; sys.exit(main())"]


class Run:
    """One finished run: the client's summary and every recorded event, by process."""

    def __init__(self, workdir: Path, summary: dict[str, Any], events_dir: Path) -> None:
        self.workdir, self.summary = workdir, summary
        self.events: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        for path in sorted(events_dir.glob("events-*.jsonl")):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                (self.stats.append(row["stats"]) if "stats" in row else self.events.append(row))

    def named(self, name: str, pp_rank: "int | None" = None) -> list[dict[str, Any]]:
        rows = [e for e in self.events if e["name"] == name and (pp_rank is None or e["pp_rank"] == pp_rank)]
        return sorted(rows, key=lambda e: e["start_ns"])


def _run(workdir: Path, traced: bool, extra: tuple[str, ...] = ()) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    events_dir = workdir / "events"
    events_dir.mkdir()
    program = [sys.executable, "-m", "examples.serving", *ARGS, "--json", str(workdir / "summary.json")]
    command = [*_sched_trace_cli(), "run", "--config", str(CONFIG), *extra, "--", *program] if traced else program
    done = subprocess.run(command, cwd=workdir, env=_environment(events_dir), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, f"{command}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    summary = json.loads((workdir / "summary.json").read_text())
    return Run(workdir, summary, events_dir)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("plain"), traced=False)


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("traced"), traced=True)


@pytest.fixture(scope="module")
def expected_tokens() -> dict[str, int]:
    sys.path.insert(0, str(REPO))
    try:
        from examples.serving.client import Workload, make_requests
        from examples.serving.model import ModelConfig
    finally:
        sys.path.remove(str(REPO))
    workload = Workload(num_requests=NUM_REQUESTS, max_new_tokens=6, min_new_tokens=6)
    return {req.rid: req.max_new_tokens for req in make_requests(workload, ModelConfig().vocab_size)}


# --- the program itself ------------------------------------------------------------


def test_the_example_contains_no_tracing_code() -> None:
    sources = list(EXAMPLE.glob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        code = [line for line in source.read_text().splitlines() if "import" in line]
        assert not [line for line in code if "sched_trace" in line], source


def test_untraced_run_serves_every_request(plain_run: Run, expected_tokens: dict[str, int]) -> None:
    assert plain_run.summary["requests"] == NUM_REQUESTS
    assert plain_run.summary["output_tokens"] == sum(expected_tokens.values())
    assert plain_run.events == []  # nothing configured, nothing recorded


def test_tracing_does_not_change_what_the_engine_generates(plain_run: Run, traced_run: Run) -> None:
    assert traced_run.summary["outputs_sha256"] == plain_run.summary["outputs_sha256"]
    assert traced_run.summary["output_tokens"] == plain_run.summary["output_tokens"]


# --- the configuration applied, in every rank process --------------------------------


def test_config_applied_in_every_scheduler_process(traced_run: Run) -> None:
    pids_by_rank = collections.defaultdict(set)
    for event in traced_run.events:
        pids_by_rank[event["pp_rank"]].add(event["pid"])
    assert set(pids_by_rank) == set(range(PP_SIZE))
    assert all(len(pids) == 1 for pids in pids_by_rank.values())
    assert len({pid for pids in pids_by_rank.values() for pid in pids}) == PP_SIZE
    for stats in traced_run.stats:
        assert stats["level"] == 4
        assert stats["unresolved_targets"] == []
        assert stats["plugin_errors"] == {}
        assert stats["extract_missing"] == {}


def test_stages_carry_rank_keys_and_nest_in_their_step(traced_run: Run) -> None:
    steps = {(e["pid"], e["span_id"]): e for e in traced_run.named("scheduler_step")}
    assert steps
    stages = [e for e in traced_run.events if e["kind"] == "stage"]
    assert {e["name"] for e in stages} == {
        "recv_requests", "get_next_batch_to_run", "run_batch_cpu", "process_batch_result",
        "pp_recv_proxy", "pp_send_proxy", "pp_recv_outputs", "pp_send_outputs",
    }
    for stage in stages:
        step = steps[(stage["pid"], stage["parent_id"])]
        assert (stage["pp_rank"], stage["tp_rank"], stage["dp_rank"]) == (step["pp_rank"], 0, 0)
        assert stage["batch_id"] == step["batch_id"]
        assert stage["thread_label"] == "Scheduler"
        assert step["start_ns"] <= stage["start_ns"] <= stage["end_ns"] <= step["end_ns"]


def test_run_batch_per_rank_and_microbatch(traced_run: Run) -> None:
    for pp_rank in range(PP_SIZE):
        runs = traced_run.named("run_batch_cpu", pp_rank)
        assert {e["microbatch"] for e in runs} == set(range(PP_SIZE))
        for event in runs:
            assert event["level"] == 4
            assert event["batch_size"] == len(event["attrs"]["requests"]) > 0
            assert event["attrs"]["forward_mode"] in ("prefill", "decode")


def test_every_request_runs_once_per_token_on_every_rank(traced_run: Run, expected_tokens: dict[str, int]) -> None:
    for pp_rank in range(PP_SIZE):
        forwards: collections.Counter[str] = collections.Counter()
        prefills: collections.Counter[str] = collections.Counter()
        for event in traced_run.named("run_batch_cpu", pp_rank):
            forwards.update(event["attrs"]["requests"])
            if event["attrs"]["forward_mode"] == "prefill":
                prefills.update(event["attrs"]["requests"])
        assert prefills == collections.Counter(expected_tokens.keys())
        assert forwards == collections.Counter(expected_tokens)  # prefill gives token 1, decodes the rest


def test_pp_sends_and_receives_pair_up_by_microbatch(traced_run: Run) -> None:
    def sequence(name: str, pp_rank: int) -> list[tuple[int, int]]:
        return [(e["microbatch"], e["batch_size"]) for e in traced_run.named(name, pp_rank)]

    first, last = 0, PP_SIZE - 1
    launched = {r: sequence("run_batch_cpu", r) for r in range(PP_SIZE)}
    assert launched[first] == launched[last]  # replicated scheduling: same batches everywhere
    assert sequence("pp_send_proxy", first) == sequence("pp_recv_proxy", last) == launched[first]
    # Sampled tokens go round: last rank -> rank 0 -> ... -> last rank.
    assert sequence("pp_send_outputs", last) == sequence("pp_recv_outputs", first) == launched[last]
    assert sequence("pp_send_outputs", first) == sequence("pp_recv_outputs", last) == launched[first]
    for pp_rank in range(PP_SIZE):
        assert sequence("process_batch_result", pp_rank) == launched[pp_rank]


def test_a_rank_waits_for_hidden_states_before_it_runs(traced_run: Run) -> None:
    last = PP_SIZE - 1
    runs = traced_run.named("run_batch_cpu", last)
    recvs = traced_run.named("pp_recv_proxy", last)
    assert len(runs) == len(recvs)
    for recv, run in zip(recvs, runs):
        assert recv["parent_id"] == run["parent_id"]  # same step
        assert recv["end_ns"] <= run["start_ns"]


def test_level_3_leaves_level_4_stages_untraced(tmp_path: Path) -> None:
    run = _run(tmp_path, traced=True, extra=("--level", "3"))
    names = {e["name"] for e in run.events}
    assert names == {"scheduler_step", "get_next_batch_to_run"}
    assert {e["pp_rank"] for e in run.events} == set(range(PP_SIZE))


# --- the trace contract and snapshot: a target the engine renamed fails here by name ----------

#: What the example's config must keep producing on every rank (see docs/testing.md).
SERVING_CONTRACT = (
    Contract()
    .stages("scheduler_step", "recv_requests", "get_next_batch_to_run", "run_batch_cpu",
            "process_batch_result", ranks=[f"PP{r}" for r in range(PP_SIZE)])
    .stages("pp_send_proxy", ranks=["PP0"]).stages("pp_recv_proxy", ranks=[f"PP{PP_SIZE - 1}"])
    .nested("run_batch_cpu", inside="scheduler_step")
    .attributes("run_batch_cpu", "pp_mb_id", "batch_size", "requests", "forward_mode")
)


def test_the_trace_keeps_its_contract_and_snapshot(traced_run: Run, sched_trace_snapshot) -> None:
    trace = SERVING_CONTRACT.check(Trace.from_capture(traced_run.workdir / "capture"))
    # How many steps run depends on when requests reach the ranks: the shape without counts.
    sched_trace_snapshot.assert_match(trace, counts=False)


# --- exporter plugins, when installed ----------------------------------------------------


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _otlp_spans(directory: Path) -> list[dict[str, Any]]:
    spans = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            for resource in json.loads(line).get("resourceSpans", []):
                for scope in resource.get("scopeSpans", []):
                    spans.extend(scope.get("spans", []))
    return spans


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}


def test_otel_request_spans_continue_the_clients_traces(traced_run: Run) -> None:
    _require("sched_trace_otel")
    spans = _otlp_spans(traced_run.workdir / "sched-trace-out" / "otel")
    assert spans, "the otel plugin wrote no spans"
    by_trace = collections.defaultdict(list)
    for span in spans:
        by_trace[span["traceId"]].append(span)
    for rid, traceparent in traced_run.summary["traceparents"].items():
        _, trace_id, parent_id, _ = traceparent.split("-")
        in_trace = by_trace.get(trace_id, [])
        roots = [s for s in in_trace if s.get("parentSpanId") == parent_id]
        assert roots, f"no span of {rid} has the client's span {parent_id} as parent"
        assert any(_attributes(s).get("rid") == rid for s in in_trace)
    mb_ids = {str(_attributes(s).get("pp_mb_id")) for s in spans if s["name"] == "run_batch_cpu"}
    assert {str(mb) for mb in range(PP_SIZE)} <= mb_ids


def test_perfetto_timeline_has_every_rank_and_microbatch(traced_run: Run) -> None:
    _require("sched_trace_perfetto")
    files = sorted((traced_run.workdir / "sched-trace-out" / "perfetto").glob("*"))
    assert len(files) == PP_SIZE, files
    from sched_trace.traceio import read_events

    timeline = collections.Counter(
        (e.rank.pp_rank, e.microbatch) for e in read_events(files) if e.name == "run_batch_cpu")
    recorded = collections.Counter((e["pp_rank"], e["microbatch"]) for e in traced_run.named("run_batch_cpu"))
    assert timeline == recorded
    merged = traced_run.workdir / "merged.perfetto-trace"
    done = subprocess.run([*_sched_trace_cli(), "merge", "-o", str(merged), *map(str, files)],
                          cwd=traced_run.workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert merged.stat().st_size > 0


def test_report_reads_the_run(traced_run: Run) -> None:
    out = traced_run.workdir / "sched-trace-out"
    done = subprocess.run([*_sched_trace_cli(), "report", "--no-png", str(out)], cwd=traced_run.workdir,
                          capture_output=True, text=True, timeout=120)
    if "not available" in done.stderr:
        pytest.skip("sched-trace report is not available yet")
    assert done.returncode == 0, done.stderr
    assert "PP0" in done.stdout and "PP1" in done.stdout and "run_batch_cpu" in done.stdout


def test_the_docs_quote_the_example_configuration() -> None:
    import re

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    doc = (REPO / "docs" / "serving.md").read_text()
    actual = tomllib.loads(CONFIG.read_text())["instrument"]
    quoted = [tomllib.loads(block) for block in re.findall(r"^```toml\n(.*?)^```", doc, re.S | re.M)]
    assert quoted
    for table in quoted:
        for entry in table["instrument"]:
            assert entry in actual, entry["target"]
