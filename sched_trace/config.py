"""Configuration from a TOML file, a dict, or the environment, validated up front.

Every error names the file, the key and the value, and says what would be right::

    level = 4                      # 0 (off) .. 9
    level_file = "/run/sched-trace/level"  # while it holds a level, that level (sched-trace level N)
    autoload = true                # load plugins from the 'sched_trace' entry points
    block = ["prometheus"]         # plugin names never to load
    profiles = ["torch-pipelining"]

    [[instrument]]
    target = "engine.scheduler:Scheduler.run_batch"
    stage = "run_batch_cpu"        # default: the attribute's name
    kind = "stage"                 # or "batch", "request", "thread"
    level = 4
    microbatch = "mb_id"
    batch_size = "len(batch.reqs)"
    rank = { pp_rank = "self.pp_rank" }
    keep_if = "result is not None" # a span only when the call did work

    [plugins.otel]                 # each plugin reads its own table
    file = "traces/"
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from . import _level_file, _options
from ._errors import ConfigError, ExtractorError, InstrumentationError
from ._stages import MAX_LEVEL
from ._targets import parse_target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILE_DIR = Path(__file__).with_name("profiles")
TOP_KEYS = {"level": int, "level_file": str, "autoload": bool, "block": list, "profiles": list, "instrument": list,
            "plugins": dict}
#: The keys of an [[instrument]] table: what every declaration has, then the options of ``_options``.
TARGET_KEYS = {"target": str, "stage": str, "kind": str, "level": int,
               **{name: _options.TOML_TYPES[role] for name, role in _options.ROLES.items()}}


@dataclass(frozen=True)
class TargetSpec:
    """One ``[[instrument]]`` entry; ``where`` locates it for error messages."""

    target: str
    options: Mapping[str, Any]
    where: str


@dataclass(frozen=True)
class Config:
    """The validated configuration handed to plugins through ``sched_trace_configure``."""

    level: Optional[int] = None
    level_file: Optional[str] = None  # absolute; while it holds a level, that level (sched_trace._level_file)
    autoload: bool = True
    block: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    instrument: tuple[TargetSpec, ...] = ()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The ``[plugins.NAME]`` table (empty when absent)."""
        return dict(self.plugins.get(name, {}))


def _unknown(key: str, valid: Any, source: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1) if isinstance(key, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"unknown key {key!r}: {hint}valid keys are {', '.join(sorted(valid))}",
        source=source, key=where,
    )


def _check_type(value: Any, expected: type, source: str, key: str) -> None:
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok and key == "instrument" and isinstance(value, Mapping):
        raise ConfigError("is a single table; write [[instrument]] (double brackets), once per target",
                          source=source, key=key)
    if not ok:
        raise ConfigError(
            f"{value!r} is a {type(value).__name__}; expected a {expected.__name__}",
            source=source, key=key,
        )


def parse(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a mapping (as loaded from TOML) into a Config, or raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"configuration must be a table, got {type(data).__name__}", source=source)
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, source, key)
        _check_type(value, TOP_KEYS[key], source, key)
    level = data.get("level")
    if level is not None and not 0 <= level <= MAX_LEVEL:
        raise ConfigError(f"{level!r} is out of range: use 0 (off) to {MAX_LEVEL}", source=source, key="level")
    level_file = data.get("level_file")
    if level_file is not None:
        try:
            level_file = _level_file.check_path(level_file)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key="level_file") from None
    for key in ("block", "profiles"):
        for item in data.get(key, []):
            if not isinstance(item, str):
                raise ConfigError(f"{item!r} must be a string", source=source, key=key)
    profiles = tuple(data.get("profiles", []))
    targets: list[TargetSpec] = []
    for name in profiles:
        targets.extend(load_profile(name, source).instrument)
    targets.extend(_target_specs(data.get("instrument", []), source))
    plugins = data.get("plugins", {})
    for name, table in plugins.items():
        _check_type(table, dict, source, f"plugins.{name}")
    return Config(
        level=level,
        level_file=level_file,
        autoload=data.get("autoload", True),
        block=tuple(data.get("block", [])),
        profiles=profiles,
        instrument=tuple(targets),
        plugins={name: dict(table) for name, table in plugins.items()},
        source=source,
    )


def _target_specs(entries: list, source: str) -> list[TargetSpec]:
    specs = []
    for index, entry in enumerate(entries):
        where = f"instrument[{index}]"
        _check_type(entry, dict, source, where)
        for key, value in entry.items():
            if key not in TARGET_KEYS:
                raise _unknown(key, TARGET_KEYS, source, f"{where}.{key}")
            _check_type(value, TARGET_KEYS[key], source, f"{where}.{key}")
        if "target" not in entry:
            raise ConfigError("missing 'target' (e.g. target = \"pkg.mod:Class.method\")", source=source, key=where)
        try:
            parse_target(entry["target"])
        except InstrumentationError as exc:
            raise ConfigError(str(exc), source=source, key=f"{where}.target") from None
        if entry.get("kind", "stage") not in _options.KINDS:
            raise ConfigError(f"{entry['kind']!r} must be 'stage' or 'batch' (spans), 'request' (request "
                              f"events) or 'thread' (the thread's identity)", source=source, key=f"{where}.kind")
        options = {k: v for k, v in entry.items() if k not in ("target", "stage", "kind", "level")}
        try:
            _options.check(entry["target"], entry.get("kind", "stage"), options)
        except InstrumentationError as exc:
            raise ConfigError(str(exc), source=source, key=where) from None
        if "level" in entry and not 0 <= entry["level"] <= MAX_LEVEL:
            raise ConfigError(f"{entry['level']!r} is out of range 0..{MAX_LEVEL}", source=source, key=f"{where}.level")
        _check_extractors(entry, source, where)
        specs.append(TargetSpec(entry["target"], {k: v for k, v in entry.items() if k != "target"}, f"{source}: {where}"))
    return specs


def _check_extractors(entry: Mapping[str, Any], source: str, where: str) -> None:
    """Grammar only: whether the root names a parameter is checked when patched."""
    try:
        _options.check_grammar(entry)
    except ExtractorError as exc:
        raise ConfigError(str(exc), source=source, key=where) from None


def load(path: "str | os.PathLike[str]") -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file not found (pass an existing path to --config or SCHED_TRACE_CONFIG)", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid TOML: not UTF-8 text (byte {exc.start})", source=str(path)) from None
    except (OSError, ValueError) as exc:  # a directory, unreadable, a NUL in the name
        raise ConfigError(f"cannot read it: {exc.strerror if isinstance(exc, OSError) else exc}",
                          source=repr(str(path))[1:-1]) from None
    return parse(data, str(path))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name: str, source: str = "<profile>") -> Config:
    path = PROFILE_DIR / f"{name}.toml"
    # A profile is a shipped file, named: never a path to some other TOML file.
    if name not in available_profiles() or not path.is_file():
        raise ConfigError(
            f"unknown profile {name!r}; shipped profiles: {', '.join(available_profiles()) or 'none'}",
            source=source, key="profiles",
        )
    profile = load(path)
    from .profile_check import check_profile  # a profile must not silently trace nothing

    check_profile(name, profile)
    return profile


def resolve(config: Any) -> Config:
    """Accept a Config, a mapping, a path, or None (then ``SCHED_TRACE_CONFIG``)."""
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return parse(config)
    if isinstance(config, (str, os.PathLike)):
        return load(config)
    if config is None:
        env = os.environ.get("SCHED_TRACE_CONFIG")
        return load(env) if env else Config()
    raise ConfigError(f"config must be a path, a mapping or a Config, got {type(config).__name__}")


def merge(base: Config, extra: Config) -> Config:
    """``base`` with the targets of ``extra`` (a profile) applied first, and the profile named."""
    return replace(base, profiles=base.profiles + (extra.source,), instrument=extra.instrument + base.instrument)
