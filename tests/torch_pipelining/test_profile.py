"""Shipped profiles match the installed packages, fail loudly when they do not, undo exactly."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sched_trace
from sched_trace import config, profile_check
from sched_trace._targets import lookup, parse_target

PROFILES = config.available_profiles()
PROFILE_FILE = config.PROFILE_DIR / "torch-pipelining.toml"


def installed(module_name: str) -> bool:
    return importlib.util.find_spec(module_name.split(".")[0]) is not None


@pytest.mark.parametrize("name", PROFILES)
def test_every_target_of_every_shipped_profile_resolves_against_the_installed_packages(name: str) -> None:
    targets = [spec.target for spec in config.load_profile(name).instrument]
    assert targets
    checked = 0
    for target in targets:
        module_name, _, _ = parse_target(target)
        if not installed(module_name):
            continue
        module = importlib.import_module(module_name)
        owner, original, _, _ = lookup(target, module)
        assert callable(original), target
        checked += 1
    assert checked or not any(installed(parse_target(t)[0]) for t in targets)


def test_torch_pipelining_profile_covers_each_schedule_entry_point() -> None:
    pytest.importorskip("torch")
    targets = {spec.target.split(":")[1] for spec in config.load_profile("torch-pipelining").instrument}
    assert {
        "PipelineScheduleSingle.step", "PipelineScheduleMulti.step",
        "_PipelineStageBase.forward_one_chunk", "_PipelineStageBase.backward_one_chunk",
        "_PipelineStageBase.backward_weight_one_chunk", "_batch_p2p", "_wait_batch_p2p",
    } <= targets
    from torch.distributed import pipelining

    for name in pipelining.__all__:
        klass = getattr(pipelining, name)
        if name.startswith("Schedule"):  # every public schedule steps through one of the two
            assert klass.step in (pipelining.schedules.PipelineScheduleSingle.step,
                                  pipelining.schedules.PipelineScheduleMulti.step), name


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_stale_profile_says_which_target_is_gone_and_which_version_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    stale = PROFILE_FILE.read_text().replace('schedules:_wait_batch_p2p"', 'schedules:_wait_for_p2p"')
    (tmp_path / "torch-pipelining.toml").write_text(stale)
    result = run_python(f"""
        import sys
        import sched_trace
        from sched_trace import config
        config.PROFILE_DIR = __import__("pathlib").Path({str(tmp_path)!r})
        try:
            sched_trace.configure(profile="torch-pipelining", autoload=False)
        except sched_trace.ConfigError as exc:
            print(exc)
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "profile 'torch-pipelining' does not match the installed packages" in message
    assert "torch.distributed.pipelining.schedules:_wait_for_p2p" in message
    assert "instrument[6].target" in message and "close names: _wait_batch_p2p" in message
    import torch

    assert f"torch {torch.__version__}" in message


def test_checking_a_matching_profile_imports_nothing(tmp_path: Path) -> None:
    """configure() before torch is imported reads sources; the patch waits for the import."""
    pytest.importorskip("torch")
    result = run_python("""
        import sys
        import sched_trace
        sched_trace.configure(profile="torch-pipelining", autoload=False)
        print("torch" in sys.modules)
        from torch.distributed.pipelining import schedules
        step = schedules.PipelineScheduleSingle.__dict__["step"]
        print(getattr(step, "__wrapped__", None) is not None and step is not step.__wrapped__)
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # patched (a traced method) once torch is imported


def test_static_check_agrees_with_the_live_modules() -> None:
    pytest.importorskip("torch")
    assert profile_check.problems(config.load_profile("torch-pipelining")) == []
    message = profile_check.target_problem("torch.distributed.pipelining.stage:_PipelineStageBase.forward_chunk")
    assert message is not None and "forward_one_chunk" in message


def owners(profile: str) -> dict[str, dict[str, object]]:
    """Every namespace the profile patches, as {name: object} snapshots."""
    from torch.distributed.pipelining import schedules, stage

    spaces = {"schedules": vars(schedules), "stage": vars(stage)}
    for module in (schedules, stage):
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == module.__name__:
                spaces[value.__qualname__] = vars(value)
    return {name: dict(space) for name, space in spaces.items()}


def test_uninstrument_leaves_torch_exactly_as_it_was(sched_trace_recorder: object) -> None:
    pytest.importorskip("torch")
    before = owners("torch-pipelining")
    sched_trace.configure(profile="torch-pipelining", autoload=False)
    try:
        patched = owners("torch-pipelining")
        changed = {(space, key) for space in before for key in before[space]
                   if patched[space].get(key) is not before[space][key]}
        assert len(changed) == len(config.load_profile("torch-pipelining").instrument)
        assert all(set(patched[space]) == set(before[space]) for space in before), "no attribute added"
        sched_trace.uninstrument()
        after = owners("torch-pipelining")
        for space in before:
            assert set(after[space]) == set(before[space])
            assert all(after[space][key] is before[space][key] for key in before[space]), space
    finally:
        sched_trace.shutdown()
