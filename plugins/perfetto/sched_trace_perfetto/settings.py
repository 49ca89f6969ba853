"""``[plugins.perfetto]`` settings, validated up front; ``SCHED_TRACE_PERFETTO_<KEY>`` overrides.

    [plugins.perfetto]
    directory = "sched-trace-out/perfetto"   # one file per process goes here
    format = "perfetto"                      # or "chrome" (JSON, for Holistic Trace Analysis)
    counters = ["queue_depth"]               # numeric attrs drawn as counter tracks
    flows = true                             # arrows following a micro-batch across PP ranks
    capacity = 131072                        # events buffered before dropping (counted)
    process = true                           # encode and write in a separate exporter process
    track_keys = []                          # extra rank keys that get a track per value, e.g.
                                             # ["stage_index"]; others become slice arguments
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from sched_trace import ConfigError

FORMATS = ("perfetto", "chrome")
PREFIX = "plugins.perfetto"


@dataclass(frozen=True)
class PerfettoSettings:
    directory: str = "sched-trace-out/perfetto"
    format: str = "perfetto"
    counters: tuple[str, ...] = field(default=("queue_depth",))
    flows: bool = True
    capacity: int = 131072
    process: bool = True
    track_keys: tuple[str, ...] = ()

    @property
    def suffix(self) -> str:
        return ".json" if self.format == "chrome" else ".perfetto-trace"


_FIELDS = {f.name: f for f in dataclasses.fields(PerfettoSettings)}
_TYPES: dict[str, type] = {"directory": str, "format": str, "counters": list, "flows": bool, "capacity": int,
                          "process": bool, "track_keys": list}
#: Always part of a track's identity: naming them in track_keys is a mistake.
_IDENTITY = ("host_id", "pid", "tid", "thread_label", "tp_rank", "pp_rank", "dp_rank")


def _check(key: str, value: Any, source: str) -> Any:
    where = f"{PREFIX}.{key}"
    expected = _TYPES[key]
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{value!r} is a {type(value).__name__}; expected a {expected.__name__}",
                          source=source, key=where)
    if key == "format" and value not in FORMATS:
        raise ConfigError(f"{value!r} is not a format; use one of {', '.join(FORMATS)}", source=source, key=where)
    if key == "capacity" and value < 1:
        raise ConfigError(f"{value!r} must be a positive integer", source=source, key=where)
    if key == "directory" and not value.strip():
        raise ConfigError(f"{value!r} is empty; name a directory for the trace files", source=source, key=where)
    if key == "counters":
        for item in value:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{item!r} in {value!r} is not an attribute name", source=source, key=where)
        return tuple(value)
    if key == "track_keys":
        return _track_keys(value, source, where)
    return value


def _track_keys(value: list, source: str, where: str) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{item!r} in {value!r} is not a rank key name (e.g. \"stage_index\")",
                              source=source, key=where)
        if item in _IDENTITY:
            raise ConfigError(f"{item!r} in {value!r} is always part of a track; list only extra rank keys "
                              "such as \"stage_index\"", source=source, key=where)
    return tuple(value)


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in ("directory", "format", "flows", "counters", "process", "track_keys"):
        raw = environ.get(f"SCHED_TRACE_PERFETTO_{key.upper()}")
        if raw in (None, ""):
            continue
        if key in ("flows", "process"):
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"{raw!r} is not a boolean (use 1/0, true/false)", source="environment",
                                  key=f"SCHED_TRACE_PERFETTO_{key.upper()}")
            found[key] = raw.lower() in ("1", "true", "yes", "on")
        elif key in ("counters", "track_keys"):
            found[key] = [name.strip() for name in raw.split(",") if name.strip()]
        else:
            found[key] = raw
    return found


def parse(table: Mapping[str, Any], source: str = "<config>",
          environ: Optional[Mapping[str, str]] = None) -> PerfettoSettings:
    """Validate ``[plugins.perfetto]`` plus the environment; ConfigError names key and value."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown key {key!r} = {value!r}: {hint}valid keys are {', '.join(sorted(_FIELDS))}",
                              source=source, key=f"{PREFIX}.{key}")
        values[key] = _check(key, value, source)
    for key, value in _from_env(os.environ if environ is None else environ).items():
        values[key] = _check(key, value, "environment")
    return PerfettoSettings(**values)
