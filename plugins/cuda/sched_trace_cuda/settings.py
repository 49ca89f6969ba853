"""The ``[plugins.cuda]`` table, validated: every error names the key and value."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from sched_trace import ConfigError


@dataclass(frozen=True)
class Settings:
    """What the plugin runs with; see docs/cuda.md for each key."""

    enabled: bool = True
    stages: tuple[str, ...] = ()   # empty: every stage
    suffix: str = "/gpu"
    max_pending: int = 8192
    poll_interval: float = 0.005
    expire_s: float = 60.0


_KEYS: dict[str, Any] = {
    "enabled": bool, "stages": list, "suffix": str, "max_pending": int,
    "poll_interval": (int, float), "expire_s": (int, float),
}


def parse_settings(table: Mapping[str, Any], source: str = "<dict>") -> Settings:
    """Validate the ``[plugins.cuda]`` table into :class:`Settings`, or raise ConfigError."""
    values = dict(table)
    for key, value in values.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(key, list(_KEYS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown key {key!r} = {value!r}: {hint}valid keys are "
                              f"{', '.join(sorted(_KEYS))}", source=source, key=f"plugins.cuda.{key}")
        expected = _KEYS[key]
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            _fail(key, value, f"is a {type(value).__name__}; expected a "
                  f"{expected.__name__ if isinstance(expected, type) else 'number'}", source)
    if "stages" in values:
        if not all(isinstance(name, str) and name for name in values["stages"]):
            _fail("stages", values["stages"], "must list stage names (non-empty strings)", source)
        values["stages"] = tuple(values["stages"])
    if "suffix" in values and not values["suffix"]:
        _fail("suffix", values["suffix"], "must not be empty: GPU events need a name of their own", source)
    if values.get("max_pending", 1) < 1:
        _fail("max_pending", values["max_pending"], "must be a positive integer", source)
    for key in ("poll_interval", "expire_s"):
        if key in values and not values[key] > 0:
            _fail(key, values[key], "must be a positive number of seconds", source)
    return Settings(**values)


def _fail(key: str, value: Any, why: str, source: str) -> None:
    raise ConfigError(f"{key} = {value!r} {why}", source=source, key=f"plugins.cuda.{key}")
