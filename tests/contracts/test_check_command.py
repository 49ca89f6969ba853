"""``sched-trace check``: one row per target, exit 0 / 1 / 2, from the installed source.

A small library written into tmp_path stands for an engine: each test breaks one thing
a release can break (a renamed method, a renamed parameter, a renamed attribute, a
method turned static) in a copy of a profile, and the row names it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from sched_trace.cli import main

ENGINE = textwrap.dedent("""
    from __future__ import annotations
    from abc import ABC
    from dataclasses import dataclass, field
    from typing import Optional

    from .base import SchedulerBase


    class Req:
        def __init__(self, rid: str, prompt: list):
            self.rid = rid
            self.origin_input_ids = prompt
            self.output_ids = []


    @dataclass
    class Batch:
        reqs: list
        forward_mode: Optional[Mode] = None


    class Mode:
        def __init__(self, name: str):
            self.name = name


    class Scheduler(SchedulerBase, ABC):
        def __init__(self, group):
            super().__init__()
            self.waiting_queue: list[Req] = []

        def run_batch(self, batch: Batch, mb_id: int):
            return batch

        def add_request(self, req: Req) -> None:
            self.waiting_queue.append(req)

        @staticmethod
        def helper(batch: Batch):
            return batch

        LIMIT = 4


    def release(req: Req) -> None:
        pass
""")
BASE = textwrap.dedent("""
    class Group:
        def __init__(self):
            self.rank_in_group = 0


    class SchedulerBase:
        def __init__(self):
            self.pp_group: Group = Group()
""")
PROFILE = textwrap.dedent("""
    [[instrument]]
    target = "toyengine.engine:Scheduler.run_batch"
    kind = "batch"
    stage = "run_batch"
    microbatch = "mb_id"
    batch_size = "len(batch.reqs)"
    rank = { pp_rank = "self.pp_group.rank_in_group" }
    attrs = { forward_mode = "batch.forward_mode.name", waiting = "len(self.waiting_queue)" }

    [[instrument]]
    target = "toyengine.engine:Scheduler.add_request"
    kind = "request"
    phase = "arrived"
    request_id = "req.rid"
    prompt_tokens = "len(req.origin_input_ids)"

    [[instrument]]
    target = "toyengine.engine:release"
    kind = "request"
    phase = "finished"
    request_id = "req.rid"
    output_tokens = "len(req.output_ids)"
""")


@pytest.fixture
def toyengine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "toyengine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text(ENGINE)
    (package / "base.py").write_text(BASE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m == "toyengine" or m.startswith("toyengine.")]:
        del sys.modules[name]


def check(tmp_path: Path, capsys: pytest.CaptureFixture, profile: str, *args: str) -> tuple[int, dict]:
    (tmp_path / "profile.toml").write_text(profile)
    code = main(["check", "--config", str(tmp_path / "profile.toml"), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def rows(report: dict) -> dict[str, dict]:
    return {row["target"].split(":")[1]: row for row in report["targets"]}


def test_a_profile_that_matches_the_source_passes_with_one_row_per_target(toyengine, capsys) -> None:
    code, report = check(toyengine, capsys, PROFILE)
    assert code == 0 and report["ok"] is True
    assert [(r["status"], r["checked_by"]) for r in report["targets"]] == [("found", "source")] * 3
    assert "toyengine" not in sys.modules  # read from source, not imported


@pytest.mark.parametrize("change, target, status, message", [
    (("Scheduler.add_request", "Scheduler.add_requests"), "Scheduler.add_requests", "missing",
     "'Scheduler' has no attribute 'add_requests'; close names: add_request"),
    (('request_id = "req.rid"\nprompt', 'request_id = "request.rid"\nprompt'), "Scheduler.add_request",
     "unknown parameter", "'request' is not a parameter of Scheduler.add_request (parameters: req). Did you mean 'req'?"),
    (('microbatch = "mb_id"', 'microbatch = "micro_batch_id"'), "Scheduler.run_batch",
     "unknown parameter", "microbatch='micro_batch_id': 'micro_batch_id' is not a parameter"),
    (("len(batch.reqs)", "len(batch.requests)"), "Scheduler.run_batch", "unknown attribute",
     "class 'Batch' (toyengine.engine) has no attribute 'requests'"),
    (("self.pp_group.rank_in_group", "self.pp_group.rank"), "Scheduler.run_batch", "unknown attribute",
     "class 'Group' (toyengine.base) has no attribute 'rank' in its source or its bases"),
    (("len(req.output_ids)", "len(req.output_tokens)"), "release", "unknown attribute",
     "class 'Req' (toyengine.engine) has no attribute 'output_tokens'"),
    (("Scheduler.run_batch", "Scheduler.helper"), "Scheduler.helper", "signature changed",
     "reads 'self', but Scheduler.helper is a static method"),
    (("Scheduler.run_batch", "Scheduler.LIMIT"), "Scheduler.LIMIT", "signature changed",
     "Scheduler.LIMIT is now a constant, not a function"),
])
def test_each_kind_of_break_fails_its_row_with_exit_1(toyengine, capsys, change, target, status, message) -> None:
    old, new = change
    assert old in PROFILE
    code, report = check(toyengine, capsys, PROFILE.replace(old, new, 1))
    assert code == 1 and report["ok"] is False
    row = rows(report)[target]
    assert row["status"] == status, row
    assert any(message in problem for problem in row["problems"]), row["problems"]
    assert [r["status"] for r in report["targets"]].count("found") == 2  # the others still hold


def test_attributes_the_source_cannot_vouch_for_are_left_alone(toyengine, capsys) -> None:
    # Mode.name through an Optional annotation is found; a step past an unannotated value
    # (req.rid is a str of no declared class) is not judged; nor is a type name.
    profile = PROFILE + textwrap.dedent("""
        [[instrument]]
        target = "toyengine.engine:Scheduler.add_request"
        kind = "request"
        phase = "queued"
        request_id = "req.rid.anything"
        status = "req.__class__.__name__"
    """)
    code, report = check(toyengine, capsys, profile)
    assert code == 0, report


def test_human_output_names_the_target_and_the_problem(toyengine, capsys) -> None:
    (toyengine / "profile.toml").write_text(PROFILE.replace("Scheduler.add_request", "Scheduler.add_requests"))
    assert main(["check", "--config", str(toyengine / "profile.toml")]) == 1
    out = capsys.readouterr().out
    assert "missing  toyengine.engine:Scheduler.add_requests  [request arrived]" in out
    assert "3 targets: 2 found, 1 missing (exit 1)" in out


@pytest.mark.parametrize("args, message", [
    (["--profile", "vllm2"], "unknown profile 'vllm2'; shipped profiles: sglang, torch-pipelining, vllm"),
    (["--config", "nope.toml"], "nope.toml: file not found"),
    ([], "nothing to check: give --profile NAME"),
])
def test_bad_input_exits_2_with_a_message(toyengine, capsys, args, message) -> None:
    assert main(["check", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_a_bad_config_file_exits_2(toyengine, capsys) -> None:
    (toyengine / "bad.toml").write_text("[[instrument]]\ntarget = 'toyengine.engine:Scheduler.run_batch'\nmicrobatch = 'len('\n")
    assert main(["check", "--config", str(toyengine / "bad.toml")]) == 2
    assert "microbatch" in capsys.readouterr().err


def test_a_package_that_is_not_installed_fails(toyengine, capsys) -> None:
    code, report = check(toyengine, capsys, PROFILE.replace("toyengine.engine:release", "notinstalled.mod:f"))
    assert code == 1
    assert rows(report)["f"]["status"] == "not installed"


def test_the_shipped_torch_profile_holds_against_the_pinned_torch(capsys) -> None:
    pytest.importorskip("torch")
    assert main(["check", "--profile", "torch-pipelining"]) == 0
    assert "7 targets: 7 found" in capsys.readouterr().out
