"""The config parser, on arbitrary input: a Config, or a ConfigError naming the file and key."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sched_trace import SchedTraceError, config
from sched_trace._errors import ConfigError

SOURCE = "fuzzed.toml"
WORDS = ["mb_id", "len(batch.reqs)", "self.pp_rank", "not self.done", "self.__class__.__name__",
         "self.__dict__", "stage", "batch", "request", "arrived", "finished", "pkg.mod:Cls.method", "a:b",
         ":", "os:system", "torch-pipelining", "../../etc/passwd", "\0"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                    st.sampled_from(WORDS), st.datetimes(), st.dates())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3)),
    max_leaves=8)
TARGETS = st.dictionaries(st.one_of(st.sampled_from(sorted(config.TARGET_KEYS)), st.text(max_size=6)),
                          VALUES, max_size=6)
CONFIGS = st.one_of(
    st.fixed_dictionaries({}, optional={
        "level": VALUES, "autoload": VALUES, "block": VALUES,
        "profiles": st.lists(st.one_of(st.text(max_size=10), st.sampled_from(WORDS)), max_size=2),
        "instrument": st.one_of(st.lists(TARGETS, max_size=3), VALUES),
        "plugins": st.dictionaries(st.text(max_size=5), VALUES, max_size=2),
    }),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), VALUES, max_size=4),
    VALUES,
)


@given(CONFIGS)
def test_any_mapping_gives_a_config_or_a_config_error_naming_the_source(data):
    try:
        result = config.parse(data, SOURCE)
    except ConfigError as error:
        assert str(error).startswith(SOURCE) or "profile" in str(error), str(error)
        return
    assert isinstance(result, config.Config)


@given(st.one_of(st.binary(max_size=300),
                 st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
                 st.sampled_from([b"\xff\xfe", b"level = 99", b"[plugins]\notel = 3", b"instrument = 5",
                                  b'[[instrument]]\ntarget = "a:b"\nattrs = { g = "self.__init__.__globals__" }\n',
                                  b"[[instrument]]\n" * 50, b'level = "' + b"a" * 10_000 + b'"'])))
def test_any_file_gives_a_config_or_a_config_error_naming_the_file(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("config") / "trace.toml"
    path.write_bytes(content)
    try:
        config.load(path)
    except SchedTraceError as error:
        assert isinstance(error, ConfigError) and str(error).startswith(str(path)), str(error)


def test_paths_that_are_no_readable_file_give_a_config_error(tmp_path):
    for path in (tmp_path, tmp_path / "missing.toml", Path("/proc/self/mem"), "bad\0name.toml"):
        try:
            config.load(path)
        except ConfigError as error:
            assert str(error).split(":")[0] in (str(path), repr(str(path))[1:-1]), str(error)
        else:
            raise AssertionError(f"{path!r} was accepted")
