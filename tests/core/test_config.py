"""Configuration: one clear error naming file, key and value; zero-edit instrumentation."""

from __future__ import annotations

import textwrap

import pytest

import sched_trace
from sched_trace import config
from tests.core.sample_scheduler import Batch, Scheduler


def write(tmp_path, text):
    path = tmp_path / "sched_trace.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_config_file_instruments_with_zero_code_edits(tmp_path, sched_trace_recorder):
    path = write(tmp_path, """
        level = 4
        [[instrument]]
        target = "tests.core.sample_scheduler:Scheduler.run_batch"
        stage = "run_batch_cpu"
        level = 4
        microbatch = "mb_id"
        batch_size = "len(batch.reqs)"
        rank = { pp_rank = "self.pp_rank" }
    """)
    sched_trace.configure(config=path, autoload=False)
    sched_trace.set_level(9)  # the fixture's level; configure set 4
    Scheduler().run_batch(Batch([1, 2]), 5)
    (event,) = sched_trace_recorder.stages("run_batch_cpu")
    assert (event.level, event.microbatch, event.batch_size, event.rank.pp_rank) == (4, 5, 2, 1)


def test_configure_is_idempotent(tmp_path, sched_trace_recorder):
    path = write(tmp_path, """
        [[instrument]]
        target = "tests.core.sample_scheduler:schedule"
    """)
    sched_trace.configure(config=path, autoload=False)
    sched_trace.configure(config=path, autoload=False)
    sched_trace.set_level(9)
    from tests.core import sample_scheduler

    sample_scheduler.schedule([1])
    assert sched_trace_recorder.names() == ["schedule"]


@pytest.mark.parametrize("text, message", [
    ("levle = 3", r"sched_trace.toml: \[levle\] unknown key 'levle': did you mean 'level'\?"),
    ("level = 'high'", r"\[level\] 'high' is a str; expected a int"),
    ("level = 12", r"\[level\] 12 is out of range"),
    ("[[instrument]]\nstage = 'x'", r"\[instrument\[0\]\] missing 'target'"),
    ("[[instrument]]\ntarget = 'a.b:C.d'\nmicrobatch_id = 'x'",
     r"\[instrument\[0\].microbatch_id\] unknown key 'microbatch_id': did you mean 'microbatch'\?"),
    ("[[instrument]]\ntarget = 'a.b:C.d'\nbatch_size = 'len(batch.reqs'",
     r"\[instrument\[0\]\] batch_size='len\(batch.reqs' is malformed"),
    ("[[instrument]]\ntarget = 'a.b.C.d'", r"\[instrument\[0\].target\] target 'a.b.C.d' must look like"),
    ("[[instrument]]\ntarget = 'a:b'\nkind = 'step'", r"\[instrument\[0\].kind\] 'step' must be 'stage' or 'batch'"),
    ("profiles = ['torch-pipelinig']", r"\[profiles\] unknown profile 'torch-pipelinig'"),
    ("level = = 3", r"not valid TOML"),
])
def test_bad_config_names_file_key_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(sched_trace.ConfigError, match=message):
        config.load(path)


def test_target_that_does_not_resolve_fails_at_configure(tmp_path):
    path = write(tmp_path, """
        [[instrument]]
        target = "tests.core.sample_scheduler:Scheduler.run_bach"
    """)
    with pytest.raises(sched_trace.ConfigError, match=r"sched_trace.toml: \[instrument\[0\]\].*no attribute 'run_bach'"):
        sched_trace.configure(config=path, autoload=False)


def test_extractor_naming_an_unknown_parameter_fails_at_configure(tmp_path):
    path = write(tmp_path, """
        [[instrument]]
        target = "tests.core.sample_scheduler:Scheduler.run_batch"
        microbatch = "micro_batch"
    """)
    with pytest.raises(sched_trace.ConfigError, match=r"\[instrument\[0\]\] 'tests.core.sample_scheduler:Scheduler.run_batch': microbatch='micro_batch'"):
        sched_trace.configure(config=path, autoload=False)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(sched_trace.ConfigError, match="nope.toml: file not found"):
        config.load(tmp_path / "nope.toml")


def test_config_from_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "level = 2")
    monkeypatch.setenv("SCHED_TRACE_CONFIG", str(path))
    assert config.resolve(None).level == 2
    monkeypatch.setenv("SCHED_TRACE_LEVEL", "3")
    assert sched_trace.configure(autoload=False).level == 2
    assert sched_trace.get_level() == 3  # the environment wins over the file


def test_bad_level_env_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SCHED_TRACE_LEVEL", "loud")
    with pytest.raises(ValueError, match="SCHED_TRACE_LEVEL must be an integer from 0"):
        sched_trace.configure(autoload=False)


def test_a_file_that_cannot_be_read_as_toml_is_a_config_error_naming_it(tmp_path):
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b'level = 4 # caf\xe9\n')
    with pytest.raises(sched_trace.ConfigError, match=rf"^{not_utf8}: not valid TOML: not UTF-8 text \(byte 15\)"):
        config.load(not_utf8)
    with pytest.raises(sched_trace.ConfigError, match=rf"^{tmp_path}: cannot read it: Is a directory"):
        config.load(tmp_path)
    with pytest.raises(sched_trace.ConfigError, match=r"^bad\\x00name.toml: cannot read it"):
        config.load("bad\0name.toml")


def test_keys_that_are_not_strings_are_named_not_a_crash():
    with pytest.raises(sched_trace.ConfigError, match=r"unknown key 3"):
        config.parse({3: "x"}, "dict.toml")
    with pytest.raises(sched_trace.ConfigError, match=r"instrument\[0\]\.7.*unknown key 7"):
        config.parse({"instrument": [{"target": "a:b", 7: 1}]}, "dict.toml")
