"""Start, drive and stop a real SGLang HTTP server on this CPU, traced or not.

Used by tests/sglang/ and by the engines benchmark. The server runs in .venv-sglang (made by
.ci/backends/sglang.sh) with the tiny random-weight model of :mod:`tests.sglang.tiny_model`,
SGLang's CPU engine, and two test stand-ins on PYTHONPATH (``sgl_kernel`` and torchvision,
see standins/). This module itself imports only the standard library, so any Python (the
test runner's, a benchmark's) can drive the server::

    from tests.sglang.server import SGLangServer, GenerateRequest

    with SGLangServer(workdir, pp_size=1, traced=True, level=None) as server:
        results = server.generate_many([GenerateRequest("r0", 16, 8), ...])
        server.abort("r9")
    # leaving the block stops the server as a user does (SIGINT to the launcher), then kills
    # whatever is left of its process group; server.returncode says how the launcher ended

Traced servers run under ``sched-trace run --profile sglang``; their OTLP-JSON files are under
``server.otel_dir`` and Perfetto files under ``server.perfetto_dir``. ``count_steps=True`` adds a
counter around SGLang's own ``Scheduler.run_batch`` (:mod:`tests.sglang.step_counter`), one
line per call in ``server.steps_dir``, written through so a SIGKILL loses none;
``capture=True`` sets ``SCHED_TRACE_CAPTURE_DIR`` (:mod:`sched_trace.capture`): every traced
process appends each event to a file of its own there as it happens; ``server.trace()`` reads
them back as a :class:`sched_trace.contracts.Trace`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV = REPO / ".venv-sglang"
VENV_PYTHON = VENV / "bin" / "python"
STANDINS = HERE / "standins"
NOT_RUNNABLE = (f"no runnable SGLang server in {VENV} (a source-only or unfinished install): "
                "run `bash .ci/backends/sglang.sh`")
SERVER_FLAGS = (
    "--device", "cpu", "--attention-backend", "torch_native", "--sampling-backend", "pytorch",
    "--disable-cuda-graph", "--load-format", "dummy", "--dtype", "bfloat16",
    "--max-total-tokens", "4096", "--mem-fraction-static", "0.05", "--max-running-requests", "8",
    "--chunked-prefill-size", "512", "--skip-server-warmup",
)


@dataclass(frozen=True)
class GenerateRequest:
    """One ``/generate`` call: ``prompt_tokens`` token ids, exactly ``max_new_tokens`` out (EOS ignored)."""

    rid: str
    prompt_tokens: int
    max_new_tokens: int

    def body(self) -> dict[str, Any]:
        seed = zlib.crc32(self.rid.encode())  # the same ids for the same rid in every run
        ids = [3 + (seed + 31 * i) % 900 for i in range(self.prompt_tokens)]
        return {"rid": self.rid, "input_ids": ids,
                "sampling_params": {"max_new_tokens": self.max_new_tokens, "ignore_eos": True,
                                    "temperature": 0.0}}


def runnable() -> bool:
    """Whether .ci/backends/sglang.sh finished its install here (it writes this stamp last)."""
    return VENV_PYTHON.exists() and (VENV / ".sched-trace-sglang").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """This checkout's code first (a venv shared by worktrees runs the tree under test), then
    the stand-ins; no inherited sched-trace settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "VIRTUAL_ENV", "PYTHONPATH"))}
    paths = [REPO, REPO / "plugins" / "otel", REPO / "plugins" / "perfetto", REPO / "plugins" / "prometheus", STANDINS]
    env.update(PYTHONPATH=os.pathsep.join(map(str, paths)), SGLANG_USE_CPU_ENGINE="1",
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def build_model(directory: Path) -> Path:
    """The tiny model (config + trained tokenizer), built once per directory."""
    if not (directory / "config.json").exists():
        subprocess.run([str(VENV_PYTHON), str(HERE / "tiny_model.py"), str(directory)], env=server_env(),
                       check=True, capture_output=True, text=True, timeout=300)
    return directory


class SGLangServer:
    """One SGLang server process group; never run two at once on a 2-core machine."""

    def __init__(self, workdir: Path, *, pp_size: int = 1, traced: bool = True, level: Optional[int] = None,
                 config: str = "", count_steps: bool = False, capture: bool = False, extra_args: Sequence[str] = (),
                 env: Optional[dict[str, str]] = None, model: Optional[Path] = None,
                 launcher: Optional[Path] = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model = build_model(model or self.workdir / "model")
        self.pp_size, self.traced, self.level = pp_size, traced, level
        self.port = free_port()
        self.otel_dir = self.workdir / "otel"
        self.perfetto_dir = self.workdir / "perfetto"
        self.steps_dir = self.workdir / "steps"
        self.capture_dir = self.workdir / "capture"
        self.log_path = self.workdir / "server.log"
        self.config_path = self.workdir / "sched_trace.toml"
        self.config_path.write_text(config or (
            f'[plugins.otel]\ndirectory = "{self.otel_dir}"\nsglang_compat = true\n'
            f'[plugins.perfetto]\ndirectory = "{self.perfetto_dir}"\n'))
        self.count_steps, self.capture = count_steps, capture
        self.launcher = launcher  # a script to run instead of sglang.launch_server (as step_counter.py is)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None

    # --- lifecycle ---------------------------------------------------------------------

    def command(self) -> list[str]:
        launch = [str(VENV_PYTHON)]
        if self.launcher is not None:
            launch.append(str(self.launcher))
        else:
            launch += [str(HERE / "step_counter.py")] if self.count_steps else ["-m", "sglang.launch_server"]
        launch += ["--model-path", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                   *SERVER_FLAGS, *self.extra_args]
        if self.pp_size > 1:
            launch += ["--pp-size", str(self.pp_size)]
        if not self.traced:
            return launch
        prefix = [str(VENV / "bin" / "sched-trace"), "run", "--config", str(self.config_path), "--profile", "sglang"]
        if self.level is not None:
            prefix += ["--level", str(self.level)]
        return prefix + ["--"] + launch

    def start(self, timeout: float = 480.0) -> "SGLangServer":
        """Wait up to ``timeout`` s for /health_generate (2 cores at load 8 slow a PP=2 start a lot).

        The HTTP port is chosen free, but SGLang picks ports of its own too (a server beside
        this one may take ours between the choice and the bind): a start that fails to bind
        is tried again on another port, twice at most.
        """
        for _ in range(2):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if "address already in use" not in str(exc):
                    raise
                self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> "SGLangServer":
        env = server_env(**self.extra_env)
        if self.pp_size > 1:  # one OpenMP core list per PP rank
            env.setdefault("SGLANG_CPU_OMP_THREADS_BIND", "|".join(str(i % (os.cpu_count() or 1))
                                                                   for i in range(self.pp_size)))
        if self.count_steps:
            env["SGLANG_TEST_STEPS_DIR"] = str(self.steps_dir)
        if self.capture:
            env["SCHED_TRACE_CAPTURE_DIR"] = str(self.capture_dir)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.kill()
                raise RuntimeError(f"SGLang exited {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                if self.request("GET", "/health_generate", timeout=30)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"SGLang did not answer /health_generate in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> Optional[int]:
        """Stop as a user does (``sig`` to the launcher alone), then kill what is left of the group."""
        if self.process is None:
            return self.returncode
        if self.process.poll() is None:
            try:
                self.process.send_signal(sig)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (the schedulers, detokenizer and exporter processes)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.returncode = self.process.returncode
        deadline = time.monotonic() + 30  # the group's other members are not our children
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            time.sleep(0.1)

    def __enter__(self) -> "SGLangServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- HTTP --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120.0) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, path, payload, headers)
            response = connection.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
        finally:
            connection.close()

    def generate(self, request: GenerateRequest, timeout: float = 300.0) -> dict[str, Any]:
        status, answer = self.request("POST", "/generate", request.body(), timeout)
        if status != 200:
            raise RuntimeError(f"/generate {request.rid}: HTTP {status}: {answer}")
        return answer

    def generate_many(self, requests: Iterable[GenerateRequest], concurrency: int = 8,
                      abort: Optional[tuple[GenerateRequest, int]] = None) -> dict[str, dict[str, Any]]:
        """Send ``requests`` concurrently; ``abort=(request, n)`` also streams ``request`` and
        aborts it after ``n`` tokens. Returns each rid's answer (``meta_info`` holds SGLang's counts)."""
        requests = list(requests)
        with ThreadPoolExecutor(concurrency + (abort is not None)) as pool:
            cut = pool.submit(self.generate_and_abort, *abort) if abort is not None else None
            answers = {r.rid: a for r, a in zip(requests, pool.map(self.generate, requests))}
            if cut is not None:
                answers[abort[0].rid] = cut.result()
        return answers

    def generate_and_abort(self, request: GenerateRequest, after_tokens: int, timeout: float = 300.0) -> dict[str, Any]:
        """Stream ``request`` and abort it through ``/abort_request`` once SGLang has sent
        ``after_tokens`` tokens; returns its last answer (``finish_reason`` ``abort``)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", "/generate", json.dumps({**request.body(), "stream": True}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"/generate {request.rid}: HTTP {response.status}: {response.read()[:500]!r}")
            last, aborted = None, False
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                last = json.loads(line[5:])
                if not aborted and last["meta_info"]["completion_tokens"] >= after_tokens:
                    self.abort(request.rid)
                    aborted = True
            if last is None:
                raise RuntimeError(f"/generate {request.rid}: the stream ended without an answer")
            return last
        finally:
            connection.close()

    def abort(self, rid: str) -> None:
        status, answer = self.request("POST", "/abort_request", {"rid": rid})
        if status != 200:
            raise RuntimeError(f"/abort_request {rid}: HTTP {status}: {answer}")

    # --- what the server left ----------------------------------------------------------

    def steps(self) -> dict[int, list[str]]:
        """Per scheduler pid, the forward mode of each ``Scheduler.run_batch`` call, in order."""
        return {int(p.stem): p.read_text().split() for p in sorted(self.steps_dir.glob("*.txt"))}


    def scheduler_pids(self) -> list[int]:
        """The scheduler processes (one per TP x PP rank): the launcher's children SGLang titles
        ``sglang::scheduler...``, found in /proc (Linux)."""
        if self.process is None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                title = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid and title.startswith("sglang::scheduler"):
                found.append(int(stat.parent.name))
        return sorted(found)

    def scheduler_cpu_s(self) -> float:
        """CPU seconds (user + system) the scheduler processes have used so far, all their threads."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.scheduler_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def trace(self) -> Any:
        """Every event every traced process recorded (``capture=True``), SIGKILL or not."""
        from sched_trace.contracts import Trace

        return Trace.from_capture(self.capture_dir)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drive_load(server: SGLangServer, requests: int = 32, prompt_tokens: int = 32, max_new_tokens: int = 32,
               concurrency: int = 8, prefix: str = "load") -> dict[str, Any]:
    """A fixed load for benchmarks: ``requests`` concurrent /generate calls; returns the wall
    time and SGLang's own token counts (sum of meta_info completion tokens)."""
    batch = [GenerateRequest(f"{prefix}-{i}", prompt_tokens, max_new_tokens) for i in range(requests)]
    start = time.perf_counter()
    answers = server.generate_many(batch, concurrency=concurrency)
    wall = time.perf_counter() - start
    tokens = sum(a["meta_info"]["completion_tokens"] for a in answers.values())
    return {"wall_s": wall, "output_tokens": tokens, "tokens_per_s": tokens / wall, "answers": answers}


if __name__ == "__main__":  # a manual check: python -m tests.sglang.server WORKDIR [pp_size]
    with SGLangServer(Path(sys.argv[1]), pp_size=int(sys.argv[2]) if len(sys.argv) > 2 else 1) as server:
        print(json.dumps(drive_load(server, requests=4, max_new_tokens=8)["output_tokens"]))
