"""A level file, and ``sched-trace level``: a running program's level set from outside it.

The rules under test (sched_trace/_level_file.py): while the file holds a level, it is the
level of every process following it, from ``configure`` on and after each change; removing
it gives each process its configured level back; a content that is not a level is refused,
warned about once and counted, the level unchanged; a target waiting for its level is
patched when the file reaches it. The looks at the file are driven here by calling the
follower's ``poll`` (what its thread does once a second), except in the tests of the thread
and of processes, which wait for the change with a deadline that only bounds a failure.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sched_trace
from sched_trace import _level_file
from sched_trace.cli import main as cli
from tests.core.sample_scheduler import Batch, Scheduler

REPO = Path(__file__).resolve().parents[2]
RUN_BATCH = "tests.core.sample_scheduler:Scheduler.run_batch"


def follower() -> _level_file.Follower:
    assert _level_file._follower is not None
    return _level_file._follower


def test_the_file_sets_the_level_while_it_holds_one_and_removing_it_gives_the_configured_level_back(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "level"
    path.write_text("3\n")
    sched_trace.configure(level=1, config={"level_file": str(path)}, autoload=False)
    assert sched_trace.get_level() == 3  # the file wins over configure's level from the start
    assert cli(["level", "5", "--file", str(path)]) == 0
    assert f"{path}: level 5" in capsys.readouterr().out
    follower().poll()
    assert sched_trace.get_level() == 5
    assert cli(["level", "--clear", "--file", str(path)]) == 0
    assert not path.exists()
    follower().poll()
    assert sched_trace.get_level() == 1  # configured
    capsys.readouterr()
    assert cli(["level", "--clear", "--file", str(path), "--wait", "60"]) == 0  # nothing changes: no wait
    assert capsys.readouterr().out == f"{path}: absent already (each process at its configured level)\n"
    follower().poll()  # nothing changed: nothing applied
    stats = sched_trace.stats()["level_file"]
    assert stats == {"path": str(path), "level": None, "configured": 1, "changes": 2, "rejected": 0, "errors": 0,
                     "error": ""}
    # each level applied is acknowledged: pid, host, level
    lines = [line.split() for line in (tmp_path / "level.applied").read_text().splitlines()]
    assert [(int(pid), int(level)) for pid, _, level in lines] == [(os.getpid(), 3), (os.getpid(), 5),
                                                                     (os.getpid(), 1)]
    # configure again: its level is the one removing the file gives back
    sched_trace.configure(level=2, config={"level_file": str(path)}, autoload=False)
    assert sched_trace.get_level() == 2
    path.write_text("4")
    follower().poll()
    assert sched_trace.get_level() == 4


def test_a_content_that_is_not_a_level_is_refused_once_counted_and_the_level_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "level"
    sched_trace.configure(level=2, config={"level_file": str(path)}, autoload=False)
    assert sched_trace.get_level() == 2  # no file: the configured level
    for text in ("high", "12", "high"):
        with open(path, "w") as file:  # a new content each time (size or time differ)
            file.write(text + " " * len(caplog.records))
        follower().poll()
        assert sched_trace.get_level() == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per content: 'high' twice is warned about once
    assert "holds 'high': write an integer from 0 (off) to 9" in warnings[0]
    assert "the level stays 2" in warnings[0] and "holds '12'" in warnings[1]
    stats = sched_trace.stats()["level_file"]
    assert stats["rejected"] == 3 and stats["changes"] == 0 and "'high'" in stats["error"]
    path.write_text("")  # `echo 3 > level` seen between its truncate and its write: passed over
    follower().poll()
    assert sched_trace.get_level() == 2 and sched_trace.stats()["level_file"]["rejected"] == 3
    path.write_text("3")
    follower().poll()
    assert sched_trace.get_level() == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_a_target_waiting_for_its_level_is_patched_when_the_file_reaches_it(tmp_path: Path) -> None:
    path = tmp_path / "level"
    path.write_text("1")
    recorder = sched_trace.MemoryRecorder()
    sched_trace.configure(config={"level_file": str(path)}, plugins=[recorder], autoload=False)
    handle = sched_trace.instrument(RUN_BATCH, stage="run_batch", level=3, microbatch="mb_id")
    assert handle.state == "dormant"
    Scheduler().run_batch(Batch(["a"]), 1)
    assert recorder.events == []
    path.write_text("3")
    follower().poll()
    assert handle.state == "active"
    Scheduler().run_batch(Batch(["a"]), 2)
    assert [(e.name, e.microbatch) for e in recorder.events] == [("run_batch", 2)]


def test_the_thread_follows_the_file_without_being_asked(tmp_path: Path) -> None:
    path = tmp_path / "level"
    sched_trace.configure(level=1, config={"level_file": str(path)}, autoload=False)
    threads = [t for t in __import__("threading").enumerate() if t.name == "sched-trace-level"]
    assert len(threads) == 1 and threads[0].daemon
    path.write_text("6")
    deadline = time.monotonic() + 60  # bounds a failure only: the thread looks once a second
    while sched_trace.get_level() != 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sched_trace.get_level() == 6
    sched_trace.shutdown()  # stops following: a change after it is not applied
    assert sched_trace.stats()["level_file"] is None
    path.write_text("2")
    time.sleep(2.5 * _level_file.POLL_S)
    assert sched_trace.get_level() == 6


def test_mistakes_fail_when_declared_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-dir" / "level"
    with pytest.raises(sched_trace.ConfigError, match=r"level_file .*its directory .*no-such-dir does not exist; "
                                                      r"create it"):
        sched_trace.configure(config={"level_file": str(missing)}, autoload=False)
    with pytest.raises(sched_trace.ConfigError, match=r"is a directory: give a file path"):
        sched_trace.configure(config={"level_file": str(tmp_path)}, autoload=False)
    with pytest.raises(sched_trace.ConfigError, match=r"did you mean 'level_file'"):
        sched_trace.configure(config={"level_fil": "x"}, autoload=False)
    monkeypatch.setenv(_level_file.ENV, str(missing))
    with pytest.raises(sched_trace.ConfigError, match=rf"{_level_file.ENV} .*does not exist"):
        sched_trace.configure(autoload=False)
    monkeypatch.delenv(_level_file.ENV)
    with pytest.raises(SystemExit, match=r"no level file: pass --file F .*or set SCHED_TRACE_LEVEL_FILE"):
        cli(["level", "4"])
    with pytest.raises(SystemExit, match=r"level must be an integer from 0 \(off\) to 9, got 12"):
        cli(["level", "12", "--file", str(tmp_path / "level")])
    with pytest.raises(SystemExit, match=r"give a level or --clear, not both"):
        cli(["level", "3", "--clear", "--file", str(tmp_path / "level")])
    assert not (tmp_path / "level").exists()  # nothing written by a refused command


def test_the_command_without_a_level_says_what_the_file_holds_and_who_follows(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "level"
    assert cli(["level", "--file", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: absent (each process at its configured level)")
    (tmp_path / "level.applied").write_text("999999999 elsewhere 2\n")  # a process on another host
    sched_trace.configure(level=1, config={"level_file": str(path)}, autoload=False)
    capsys.readouterr()
    assert cli(["level", "4", "--file", str(path)]) == 0
    capsys.readouterr()
    follower().poll()
    assert cli(["level", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: level 4")
    assert f"pid {os.getpid()} on {os.uname().nodename}: level 4 applied last (running)" in out
    assert "pid 999999999 on elsewhere: level 2 applied last (on another host)" in out


PROGRAM = textwrap.dedent("""
    import multiprocessing, os, sys, time
    import sched_trace

    def watch(tag):
        # report this process's level each time it changes, until it reaches 4 (or 2 minutes)
        last, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            level = sched_trace.get_level()
            if level != last:
                print(tag, os.getpid(), level, flush=True)
                last = level
            if level == 4:
                return
            time.sleep(0.02)

    if __name__ == "__main__":
        child = multiprocessing.get_context("spawn").Process(target=watch, args=("child",))
        child.start()
        watch("parent")
        child.join()
""")


def test_sched_trace_run_level_file_reaches_every_process_and_the_command_waits_for_them(tmp_path: Path) -> None:
    path = tmp_path / "control" / "level"
    path.parent.mkdir()
    path.write_text("1")  # every process starts at 1 and acknowledges it
    (tmp_path / "serve.py").write_text(PROGRAM)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop(_level_file.ENV, None)
    program = subprocess.Popen([sys.executable, "-m", "sched_trace.cli", "run", "--level", "2", "--level-file",
                                str(path), "--", sys.executable, "serve.py"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        applied = tmp_path / "control" / "level.applied"
        deadline = time.monotonic() + 120  # both processes started and following (bounds a failure only)
        while (not applied.exists() or len(applied.read_text().splitlines()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        level = subprocess.run([sys.executable, "-m", "sched_trace.cli", "level", "4", "--file", str(path),
                                "--wait", "120"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        out, err = program.communicate(timeout=180)
    finally:
        program.kill()
    assert program.returncode == 0, err
    reports = [line.split() for line in out.splitlines()]
    pids = {tag: int(pid) for tag, pid, _ in reports}
    assert set(pids) == {"parent", "child"} and pids["parent"] != pids["child"]
    for tag in pids:  # each process: the file's 1 from the start (not --level's 2), then 4
        assert [int(lvl) for t, _, lvl in reports if t == tag] == [1, 4]
    assert level.returncode == 0, level.stderr
    for pid in pids.values():  # the command waited for both, and says so
        assert f"pid {pid} on {os.uname().nodename}: level 4" in level.stdout


def test_sched_trace_run_refuses_a_level_file_it_cannot_make(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "sched_trace.cli", "run", "--level-file",
                           str(tmp_path / "none" / "level"), "--", sys.executable, "-c", "print('ran')"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ran" not in done.stdout
    assert "--level-file" in done.stderr and "does not exist; create it" in done.stderr
