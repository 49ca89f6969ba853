"""Docs that run: every ```python block and every shell command in README.md and docs/ runs
(shell commands in a fresh directory, checked for the traces they describe); hooks are documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sched_trace import _hookdoc as hookdoc

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    for doc in DOCS:
        if not doc.exists():
            continue
        for index, match in enumerate(BLOCK.finditer(doc.read_text())):
            code = match.group(1)
            if code.lstrip().startswith("# not-run"):
                continue
            yield pytest.param(code, id=f"{doc.relative_to(REPO)}#{index}")


@pytest.mark.parametrize("code", list(snippets()))
def test_snippet_runs(code, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_hook_reference_is_generated_from_the_hookspecs():
    assert (REPO / "docs" / "hooks.md").read_text() == hookdoc.render(), (
        "docs/hooks.md is stale: run `python -m sched_trace._hookdoc > docs/hooks.md`"
    )


@pytest.mark.parametrize("name, function", hookdoc.hooks())
def test_every_hook_is_documented_with_its_signature(name, function):
    text = (REPO / "docs" / "hooks.md").read_text()
    assert f"## `{name}{hookdoc.signature(function)}`" in text
    assert function.__doc__ and len(function.__doc__.strip().splitlines()) >= 3, f"{name} needs a real docstring"


# --- every shell command in README.md and docs/, run as a user would -----------------------
#
# Each doc's commands run in order in a fresh directory that holds the repository's
# `examples/` (the docs say: run from the repository root), with the venv's bin first
# on PATH. Setting up the environment (venv, pip install, .ci/setup-backends) is what
# this test environment already is; those parts are checked, not run.

SHELL_BLOCK = re.compile(r"^```(sh|bash|console)\n(.*?)^```", re.S | re.M)
# Parts of a command that set up this very environment: checked, never run here.
SETUP = (re.compile(r"python3? -m venv \.venv$"), re.compile(r"\. \.venv/bin/activate$"),
         re.compile(r"pip install "), re.compile(r"\.ci/setup-backends$"), re.compile(r"python -m pytest$"))
NOT_RUN = {  # commands the tests exercise elsewhere, and why they are not run here
    "python -m benchmarks": "the full benchmark suite; tests/benchmarks/test_suite.py runs it with --quick",
    "export ": "environment for a remote OTLP collector; tests/otel/test_otel_env.py uses the same "
               "variables against a real receiver",
    "rotel-agent start": "per-host agent and gateway OTLP collectors; tests/fleet_net/test_collector_path.py "
                         "runs docs/deployment.md's commands on hosts in network namespaces, into Phoenix",
    "sched-trace run --profile vllm": "needs vLLM (.venv-vllm); tests/vllm/test_vllm_engine.py runs the "
                                      "profile under sched-trace run there",
    "sched-trace run --profile sglang": "needs SGLang (.venv-sglang); tests/sglang/test_sglang_server.py starts "
                                        "that server under sched-trace run",
    "python -m tests.sglang.measure": "starts real SGLang servers (.venv-sglang) for minutes; docs/sglang.md's "
                                      "output volumes come from it",
    "python sglang/scripts/convert_otel_2_perfetto.py": "SGLang's repository script (not in its wheel); tests/sglang "
                                                        "holds the files to the structure it walks",
    "bash .ci/backends/sglang.sh": "builds .venv-sglang (2.8 GB); .ci/setup-backends runs it",
    "python -m pytest tests/sglang": "tests/sglang runs in the suite itself",
    "PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check": "needs a CUDA device and writes docs/performance.md; "
                                                          "tests/cuda/test_gpu_check.py runs it (it skips here)",
}
# A placeholder a doc names (`train.py`): a real torch.distributed.pipelining job standing in for it.
TRAIN_PY = '''
import os, socket
import torch, torch.distributed as dist
from sched_trace._demo.pipeline import build_schedule

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", free_port())
rank, ranks = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
torch.set_num_threads(1)
dist.init_process_group("gloo", rank=rank, world_size=ranks)
schedule = build_schedule("1f1b", rank, ranks, 4, 2.0, 4.0)
for _ in range(2):
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    args = ((x,) if rank == 0 else ()), ({"target": y, "losses": []} if rank == ranks - 1 else {})
    schedule.step(*args[0], **args[1])
dist.destroy_process_group()
'''


def shell_commands(doc: Path) -> list[str]:
    """Each command of each sh/bash/console block (console: the `$ ` lines), in order.

    A block with a NOT_RUN command is one whole setup (a remote collector ...): left out.
    """
    commands = []
    for match in SHELL_BLOCK.finditer(doc.read_text()):
        block = []
        for line in match.group(2).splitlines():
            if match.group(1) == "console":
                if not line.startswith("$ "):
                    continue  # output, not a command
                line = line[2:]
            if line.strip() and not line.lstrip().startswith("#"):
                block.append(line.strip())
        if not any(c.startswith(prefix) for c in block for prefix in NOT_RUN):
            commands.extend(block)
    return commands


def docs_with_commands():
    for doc in DOCS:
        if doc.exists() and shell_commands(doc):
            yield pytest.param(doc, id=str(doc.relative_to(REPO)))


def runnable_part(command: str) -> "str | None":
    """The command without its environment set-up steps; None when nothing is left to run."""
    parts = [part.strip() for part in command.split(" && ")]
    for part in parts:
        if part.startswith("pip install "):
            check_install_names(part)
    left = [part for part in parts if not any(p.match(part) for p in SETUP)]
    return " && ".join(left) or None


def check_install_names(command: str) -> None:
    """What `pip install` names exists here: the extras in pyproject.toml, the plugin distributions."""
    import shlex
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    plugins = {tomllib.loads(p.read_text())["project"]["name"] for p in REPO.glob("plugins/*/pyproject.toml")}
    words = shlex.split(command.split("#")[0])[2:]
    for index, word in enumerate(words):
        name, _, bracket = word.partition("[")
        if word == "-r" or (index and words[index - 1] == "-r"):
            assert word == "-r" or (REPO / word).is_file(), f"{command}: no {word} in the repository"
        elif name == "sched-trace":
            assert set(bracket.rstrip("]").split(",")) <= set(extras), f"{command}: no such extra"
        elif name.startswith("sched-trace-"):
            assert name in plugins, f"{command}: no plugin distribution {name!r} under plugins/"
        else:
            assert name == "torch", f"{command}: installs {word!r}, which this test does not know"


def trace_files_under(directory: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in directory.rglob("*")
            if p.is_file() and p.name.endswith((".perfetto-trace", ".jsonl", ".json"))}


def prepare_placeholders(home: Path, commands: list[str]) -> None:
    """Files a doc's commands name as examples of the user's own (`train.py`, `rank0.json` ...)."""
    from sched_trace import traceio

    if any("train.py" in c for c in commands):
        (home / "train.py").write_text(TRAIN_PY)
    placeholders = ("rank0.json", "rank1.perfetto-trace", "traces-host-123.jsonl")
    reads_first = bool(commands) and commands[0].split()[:2] in (["sched-trace", v] for v in ("merge", "convert", "report"))
    if reads_first or any(name in c for c in commands for name in placeholders):  # traces of an earlier run
        done = user_shell("sched-trace run --config examples/minimal/sched_trace.toml -- "
                          "python -m examples.minimal.engine", home)
        assert done.returncode == 0, done.stderr
        perfetto = sorted((home / "sched-trace-out/perfetto").glob("*.perfetto-trace"))
        otel = sorted((home / "sched-trace-out/otel").glob("*.jsonl"))
        trace = traceio.read_trace(perfetto[0])
        traceio.write_chrome(trace.events, home / "rank0.json", trace.clock_offsets)
        (home / "rank1.perfetto-trace").write_bytes(perfetto[0].read_bytes())
        (home / "traces-host-123.jsonl").write_bytes(otel[0].read_bytes())


def user_shell(command: str, home: Path) -> subprocess.CompletedProcess:
    from tests.cli.commands import run_shell

    return run_shell(command, home, timeout=500)


def check_written(command: str, home: Path, before: dict[Path, int]) -> None:
    """The traces and files `command` describes are there, and hold events."""
    import shlex

    from sched_trace import traceio

    words = shlex.split(command.split(" && ")[-1].split("  #")[0])
    out = home / "sched-trace-out"
    if words[0] != "sched-trace":  # a plain run of the program: traces nothing
        assert trace_files_under(home) == before, f"{command} wrote traces without sched-trace"
        return
    option = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-o", "--output", "--out")}
    verb = words[1]
    if verb in ("run", "demo"):
        new = [p for p, size in trace_files_under(out).items() if size and before.get(p) != size]
        assert any(p.name.endswith(".perfetto-trace") for p in new), f"{command}: no new Perfetto trace"
        assert any(p.parent.name == "otel" for p in new), f"{command}: no new OTLP-JSON file"
        assert all(size > 0 for size in trace_files_under(out).values()), f"{command}: an empty trace file"
        events = [e for p in new if p.name.endswith(".perfetto-trace") for e in traceio.read_trace(p).events]
        assert any(e.kind == "stage" for e in events), f"{command}: traces without stage events"
    if verb == "demo":
        for name in ("pipeline.perfetto-trace", "report.png", "report.json"):
            assert (out / name).stat().st_size > 0, f"{command}: no {name}"
    elif verb == "report":
        where = home / option.get("--out", "sched-trace-out")
        assert json.loads((where / "report.json").read_text())["steps"], f"{command}: a report without steps"
        assert (where / "report.png").stat().st_size > 0
    elif verb in ("merge", "convert"):
        written = home / option.get("-o", option.get("--output", "sched-trace-merged.perfetto-trace"
                                                       if verb == "merge" else "trace.perfetto-trace"))
        assert traceio.read_trace(written).events, f"{command}: wrote {written.name} without events"


# The directory left by a sequence of commands run from a fresh one: a doc that starts
# with the same commands (`sched-trace demo` in README.md and docs/bubbles.md) starts there.
_FINISHED: dict[tuple[str, ...], Path] = {}


@pytest.mark.parametrize("doc", list(docs_with_commands()))
def test_every_shell_command_runs_and_writes_what_it_describes(doc, tmp_path):
    import shutil

    home = tmp_path / "home"
    commands = [(c, runnable_part(c)) for c in shell_commands(doc)]
    runnable = [r for _, r in commands if r]
    done_before = max((k for k in _FINISHED if tuple(runnable[:len(k)]) == k), key=len, default=())
    if done_before:
        shutil.copytree(_FINISHED[done_before], home, symlinks=True)
    else:
        home.mkdir()
        (home / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    prepare_placeholders(home, runnable[len(done_before):])
    for command in runnable[len(done_before):]:
        before = trace_files_under(home)
        done = user_shell(command, home)
        assert done.returncode == 0, f"{doc.name}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        check_written(command, home, before)
    _FINISHED.setdefault(tuple(runnable), home)
