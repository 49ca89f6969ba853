"""What a declaration can reach: no interpreter internals through extractors, no imports from config.

An extractor string is copied into traces, so ``self.__class__.__init__.__globals__``
would copy a module's globals (keys, tokens) into a trace file; extractors refuse
dunder steps, except a type name. A configuration file names targets; loading it
must import nothing, and a target is patched only when the program imports it.
"""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

import sched_trace
from sched_trace import config as config_module
from sched_trace._errors import ConfigError, ExtractorError

DUNDER_PATHS = ["self.__class__.__init__.__globals__", "self.__dict__", "batch.__class__.__init__",
                "len(self.__class__.__mro__)", "mb.__reduce__", "__builtins__", "self.__class__"]


class Stage:
    stage_index = 3

    def forward_one_chunk(self, fwd_chunk_id, args=None):
        return fwd_chunk_id


@pytest.mark.parametrize("path", DUNDER_PATHS)
def test_extractors_refuse_dunder_steps_naming_the_extractor_and_the_fix(path):
    with pytest.raises(ExtractorError) as caught:
        sched_trace.stage("forward", attrs={"leak": path})(lambda self, batch, mb: None)
    message = str(caught.value)
    assert f"attrs['leak']={path!r}" in message and "dunder" in message
    assert "__class__.__name__" in message and "callable" in message  # the fix
    with pytest.raises(ExtractorError, match="dunder"):
        sched_trace.instrument(f"{__name__}:Stage.forward_one_chunk", rank={"pp_rank": path})


def test_a_config_file_with_a_dunder_extractor_names_file_and_key(tmp_path):
    path = tmp_path / "trace.toml"
    path.write_text(textwrap.dedent('''
        [[instrument]]
        target = "engine.scheduler:Scheduler.run_batch"
        attrs = { where = "self.__class__.__init__.__globals__" }
    '''))
    with pytest.raises(ConfigError, match=rf"{path}: \[instrument\[0\]\].*__globals__.*dunder"):
        config_module.load(path)


def test_a_type_name_is_still_allowed_and_recorded(sched_trace_recorder):
    sched_trace.instrument(f"{__name__}:Stage.forward_one_chunk", stage="forward",
                           attrs={"cls": "self.__class__.__name__", "qual": "self.__class__.__qualname__",
                                  "arg": "fwd_chunk_id.__class__.__name__"})
    Stage().forward_one_chunk(1)
    (event,) = sched_trace_recorder.stages("forward")
    assert dict(event.attrs) == {"cls": "Stage", "qual": "Stage", "arg": "int"}


def test_the_shipped_profile_only_uses_the_allowed_type_name():
    profile = config_module.load_profile("torch-pipelining")
    specs = [value for target in profile.instrument for key in ("attrs", "rank")
             for value in target.options.get(key, {}).values()]
    dunders = {spec for spec in specs if "__" in spec}
    assert dunders == {"self.__class__.__name__"}


def test_profile_names_are_shipped_files_not_paths(tmp_path):
    outside = tmp_path / "elsewhere.toml"
    outside.write_text('[[instrument]]\ntarget = "engine:run"\n')
    absolute = str(outside.with_suffix(""))
    for name in ("../../../../../../.." + absolute, absolute):
        with pytest.raises(ConfigError, match="unknown profile"):
            config_module.parse({"profiles": [name]})


@pytest.fixture
def import_watch(tmp_path, monkeypatch):
    """A module on sys.path that leaves a mark when it is imported."""
    name = f"st_import_watch_{uuid.uuid4().hex[:8]}"
    mark = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f'''
        open({str(mark)!r}, "a").write("imported\\n")

        class Worker:
            def run(self, mb_id):
                return mb_id
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, mark
    sys.modules.pop(name, None)


def test_loading_and_applying_a_config_imports_nothing(import_watch, tmp_path, sched_trace_recorder):
    name, mark = import_watch
    path = tmp_path / "trace.toml"
    path.write_text(textwrap.dedent(f'''
        level = 9
        autoload = false
        block = ["{name}"]
        [[instrument]]
        target = "{name}:Worker.run"
        stage = "run"
        microbatch = "mb_id"
        [plugins.{name}]
        module = "{name}"
    '''))
    before = set(sys.modules)
    config = config_module.load(path)
    sched_trace.configure(config=config, autoload=False)
    assert name not in sys.modules and not mark.exists()
    assert {m for m in set(sys.modules) - before if name in m} == set()
    # Patched when the program imports it, and only then.
    module = __import__(name)
    assert mark.read_text() == "imported\n"
    module.Worker().run(4)
    assert [e.microbatch for e in sched_trace_recorder.stages("run")] == [4]


@pytest.mark.parametrize("spec", ["__import__('os').system", "os.system('id')", "eval('1')", "self.x[0]",
                                  "getattr(self, 'x')", "lambda: 1", "self.x; import os"])
def test_extractor_strings_are_never_code(spec):
    with pytest.raises(ConfigError, match="malformed"):
        config_module.parse({"instrument": [{"target": "engine:run", "microbatch": spec}]})
