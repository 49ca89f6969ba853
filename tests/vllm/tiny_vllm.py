"""A real vLLM V1 engine on the CPU with a tiny random-weight model (no download).

Run by the vLLM venv's python (``.venv-vllm``), never imported by the project's tests:
``python tiny_vllm.py MODEL_DIR OUT.json [--requests N] [--tokens T] [--trace [--preempt]]``
(benchmarks/vllm_engine.py imports it for ``python -m benchmarks --only engines``).
It writes a local ``config.json`` for a 2-layer LlamaForCausalLM, loads it with
``load_format="dummy"`` and ``skip_tokenizer_init=True``, sends prompts as token ids
through ``LLM.generate``, and writes what vLLM returned (and, with ``--trace``, what
sched-trace recorded) as JSON for the test to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Small and CPU-friendly; set before vLLM is imported (it reads them at import).
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",          # GiB of KV cache
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # the CI's cores are shared: do not pin
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
MODEL = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64,
    "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}
PROMPT_LEN = 8


def write_model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(MODEL, indent=1))
    return directory


#: With --preempt: a KV cache of 40 blocks of 32 tokens. The tests' 32 x (8 + 16) token
#: workload fits (one block per request); PREEMPT's does not, so vLLM preempts.
SMALL_KV_CACHE = {"block_size": 32, "num_gpu_blocks_override": 40}
PREEMPT = {"requests": 24, "tokens": 88}  # 3 blocks per request at the end: 72 > 40


def make_llm(model_dir: Path, max_num_seqs: int = 32, **options: Any) -> Any:
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    from vllm import LLM

    settings: dict[str, Any] = dict(
        model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="float32",
        max_model_len=128, max_num_seqs=max_num_seqs, max_num_batched_tokens=512,
        enforce_eager=True, seed=0, disable_log_stats=True,
    )
    settings.update(options)
    return LLM(**settings)


def prompts(count: int) -> list[dict[str, list[int]]]:
    """Distinct token-id prompts, so prefix caching cannot merge them."""
    return [{"prompt_token_ids": [3 + (i * 7 + j) % 500 for j in range(PROMPT_LEN)]} for i in range(count)]


def generate(llm: Any, count: int, tokens: int) -> list[Any]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=0.0, detokenize=False)
    return llm.generate(prompts(count), params, use_tqdm=False)


def outputs_json(outputs: list[Any]) -> list[dict[str, Any]]:
    return [{"request_id": o.request_id, "prompt_tokens": len(o.prompt_token_ids),
             "output_tokens": len(o.outputs[0].token_ids), "finish_reason": o.outputs[0].finish_reason}
            for o in outputs]


def request_rows(recorder: Any) -> list[list[Any]]:
    return [[e.phase, e.request_id, e.ts_ns, e.prompt_tokens, e.output_tokens, e.batch_id, dict(e.attrs)]
            for e in recorder.requests()]


def engine_core(llm: Any) -> Any:
    """The EngineCore of an in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    return llm.llm_engine.engine_core.engine_core


def count_steps(core: Any) -> list[bool]:
    """An oracle independent of sched-trace: one entry per engine step (model executed?)."""
    steps: list[bool] = []
    step = core.step_fn

    def counted() -> Any:
        outputs, executed = step()
        steps.append(bool(executed))
        return outputs, executed

    core.step_fn = counted
    return steps


#: With TINY_VLLM_CALL_LOG=PATH in its environment, a process running vLLM's engine core
#: (the EngineCore child of a multiprocessing engine) appends a line to PATH for each
#: EngineCore step and Scheduler.schedule call it completes (see ``log_engine_calls``).
CALL_LOG = "TINY_VLLM_CALL_LOG"


def log_engine_calls(path: str) -> None:
    """An oracle independent of sched-trace for an engine core in another process: one
    line per completed call, ``PID step HAD_REQUESTS`` (whether vLLM's scheduler had
    requests when the step began: a step without them returns before scheduling) or
    ``PID schedule``. Each line is one O_APPEND write, so a process ended by a signal or
    os._exit loses nothing; the patches are post-import hooks, so they reach the child
    under fork (inherited) and spawn (this module runs again there as __mp_main__)."""
    import wrapt

    def record(line: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {line}\n".encode())
        finally:
            os.close(fd)

    def step(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        had_requests = instance.scheduler.has_requests()
        result = wrapped(*args, **kwargs)
        record(f"step {int(had_requests)}")
        return result

    def schedule(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        result = wrapped(*args, **kwargs)
        record("schedule")
        return result

    def patch_core(module: Any) -> None:
        for name in ("step", "step_with_batch_queue"):
            wrapt.wrap_function_wrapper(module, f"EngineCore.{name}", step)

    wrapt.register_post_import_hook(patch_core, "vllm.v1.engine.core")
    wrapt.register_post_import_hook(
        lambda module: wrapt.wrap_function_wrapper(module, "Scheduler.schedule", schedule),
        "vllm.v1.core.sched.scheduler")


if os.environ.get(CALL_LOG):
    log_engine_calls(os.environ[CALL_LOG])


def vllm_preemptions(llm: Any) -> int:
    """vLLM's own count of preemptions so far (its ``vllm:num_preemptions`` counter; needs
    ``disable_log_stats=False``)."""
    return int(sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions"))


def preempt_run(llm: Any, recorder: Any) -> dict[str, Any]:
    """A workload that outgrows the small KV cache: vLLM preempts requests and resumes them."""
    recorder.clear()
    before = vllm_preemptions(llm)
    outputs = generate(llm, PREEMPT["requests"], PREEMPT["tokens"])
    return {"outputs": outputs_json(outputs), "requests": request_rows(recorder),
            "vllm_preemptions": vllm_preemptions(llm) - before}


class TargetMeter:
    """Calls of sched-trace's wrapper per profile target and, with ``timed``, the time each
    call spent in it, the wrapped call itself left out.

    Each active handle's proxy is swapped for an equivalent wrapt proxy whose wrapper
    counts (and times) around sched-trace's; ``passthrough`` puts a plain passthrough
    wrapper in its place instead (the calibration: the same shim, no sched-trace).
    ``restore`` puts sched-trace's proxies back. Times are ``perf_counter_ns`` per call
    (the thread's CPU clock is a system call costing more than what it would measure);
    read their median, which a preemption or a GIL hand-over inside one call cannot move.
    """

    def __init__(self, timed: bool = False, passthrough: bool = False) -> None:
        self.timed, self.passthrough = timed, passthrough
        self.calls: dict[str, int] = {}
        self.samples_ns: dict[str, list[int]] = {}
        self.names: dict[str, str] = {}
        self.first_call: dict[str, tuple[Any, tuple, dict]] = {}  # (instance, args, kwargs), timed only
        self._swapped: list[tuple[Any, Any]] = []

    def install(self) -> "TargetMeter":
        import wrapt
        from sched_trace._instrument import handles

        for handle in handles():
            if not handle.active:
                continue
            key = handle.target
            self.calls[key], self.samples_ns[key], self.names[key] = 0, [], f"{handle.kind}:{handle.name}"
            wrapper = _passthrough if self.passthrough else handle.probe.wrapper
            setattr(handle.owner, handle.path[-1], wrapt.FunctionWrapper(handle.original, self._shim(key, wrapper)))
            self._swapped.append((handle, handle.proxy))
        return self

    def restore(self) -> None:
        for handle, proxy in self._swapped:
            setattr(handle.owner, handle.path[-1], proxy)
        self._swapped.clear()

    def _shim(self, key: str, wrapper: Any) -> Any:
        calls, clock, first_call = self.calls, time.perf_counter_ns, self.first_call
        record = self.samples_ns[key].append

        def counted(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            calls[key] += 1
            return wrapper(wrapped, instance, args, kwargs)

        def timed(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            inner = [0]

            def call(*a: Any, **k: Any) -> Any:
                start = clock()
                try:
                    return wrapped(*a, **k)
                finally:
                    inner[0] = clock() - start

            start = clock()
            try:
                return wrapper(call, instance, args, kwargs)
            finally:
                record(clock() - start - inner[0])
                if not calls[key]:
                    first_call[key] = (instance, args, kwargs)
                calls[key] += 1

        return timed if self.timed else counted


def _passthrough(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    return wrapped(*args, **kwargs)


def rebind_step(core: Any) -> None:
    # EngineCore binds step_fn once, at init: look the (un)instrumented method up again.
    core.step_fn = core.step if core.batch_queue is None else core.step_with_batch_queue


def abort_one(llm: Any, tokens: int) -> dict[str, int]:
    """Two requests through the engine's own API; one aborted after a few steps.
    Returns the output tokens vLLM gave each."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(max_tokens=tokens, ignore_eos=True, detokenize=False)
    for request_id, start in (("keep", 11), ("cut", 13)):
        engine.add_request(request_id, {"prompt_token_ids": list(range(start, start + PROMPT_LEN))}, params)
    produced = {"keep": 0, "cut": 0}
    steps = 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            produced[output.request_id] = len(output.outputs[0].token_ids)
        steps += 1
        if steps == 4:
            engine.abort_request(["cut"])
    return produced


def level_switch(args: argparse.Namespace) -> int:
    """A round of requests, the level raised to 4 from outside the engine (the level file
    every process of a ``sched-trace run --level-file FILE`` follows), a second round. A
    line ``PID switch`` in the call log parts the engine's calls of the two rounds."""
    llm = make_llm(write_model(args.model_dir))
    rounds = [outputs_json(generate(llm, args.requests, args.tokens))]
    command = subprocess.run([str(Path(sys.executable).with_name("sched-trace")), "level", "4", "--file",
                              args.level_switch, "--wait", "120"], capture_output=True, text=True, timeout=300)
    if command.returncode != 0:
        raise SystemExit(f"sched-trace level: exit {command.returncode}\n{command.stdout}{command.stderr}")
    fd = os.open(os.environ[CALL_LOG], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()} switch\n".encode())
    os.close(fd)
    rounds.append(outputs_json(generate(llm, args.requests, args.tokens)))
    args.out.write_text(json.dumps({"rounds": rounds, "pid": os.getpid(), "level_command": command.stdout}))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--trace", action="store_true", help="configure(profile='vllm') with a MemoryRecorder")
    parser.add_argument("--preempt", action="store_true",
                        help="with --trace: a small KV cache, vLLM's stats on, and a workload that vLLM preempts")
    parser.add_argument("--level-switch", metavar="FILE",
                        help="two rounds of requests, `sched-trace level 4 --file FILE --wait` between them "
                             "(marked in the call log)")
    args = parser.parse_args(argv)
    if args.level_switch:
        return level_switch(args)
    recorder = None
    if args.trace:
        import sched_trace

        recorder = sched_trace.MemoryRecorder()
        sched_trace.configure(profile="vllm", plugins=[recorder], autoload=False)
    preempt = args.trace and args.preempt
    llm = make_llm(write_model(args.model_dir), **(dict(SMALL_KV_CACHE, disable_log_stats=False) if preempt else {}))
    meter = None
    if recorder is not None:
        meter = TargetMeter().install()  # every call of sched-trace's wrappers, per target
        rebind_step(engine_core(llm))
    steps = count_steps(engine_core(llm)) if recorder is not None else None
    started = time.perf_counter()
    outputs = generate(llm, args.requests, args.tokens)
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"outputs": outputs_json(outputs), "elapsed_s": elapsed, "pid": os.getpid(),
                              "model": str(args.model_dir)}
    if recorder is not None and meter is not None:
        meter.restore()
        rebind_step(engine_core(llm))  # sched-trace's own proxies from here on, the step counter off
        result["target_calls"], result["target_names"] = dict(meter.calls), meter.names
        if preempt:
            result["vllm_preemptions"] = vllm_preemptions(llm)
        result["steps"] = list(steps)  # type: ignore[arg-type]
        result["requests"] = request_rows(recorder)
        result["spans"] = [[e.kind, e.name, e.start_ns, e.end_ns, e.batch_id, e.batch_size, e.rank.pid,
                            {k: v for k, v in e.attrs.items() if isinstance(v, (int, str))}]
                           for e in recorder.events]
        recorder.clear()
        result["abort_outputs"] = abort_one(llm, args.tokens)
        result["abort_requests"] = request_rows(recorder)
        if preempt:
            result["preemption"] = preempt_run(llm, recorder)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
