"""Stage registry (name -> level, parent) and the global verbosity level.

Levels are verbosity tiers as in SGLang's tracing: 1 = request phases ... 4 =
per-batch ``run_batch_cpu``; higher numbers are finer. A stage whose level is
above the active level costs one integer comparison on the hot path.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

DEFAULT_LEVEL = 4
MAX_LEVEL = 9


@dataclass(frozen=True, slots=True)
class StageSpec:
    name: str
    level: int
    parent: Optional[str] = None


class _Level:
    """The level the hot path compares against.

    ``active`` is the configured level while any plugin listens to event hooks,
    and 0 otherwise, so an idle sched-trace costs one comparison per call.
    """

    __slots__ = ("configured", "active", "listening")

    def __init__(self) -> None:
        self.configured = DEFAULT_LEVEL
        self.listening = False
        self.active = 0

    def update(self) -> None:
        self.active = self.configured if self.listening else 0


LEVEL = _Level()
_registry: dict[str, StageSpec] = {}
_lock = threading.Lock()


def check_level(level: object, what: str = "level") -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(
            f"{what} must be an integer from 0 (off) to {MAX_LEVEL}, got {level!r}"
        )
    return level


def level_from_env() -> Optional[int]:
    raw = os.environ.get("SCHED_TRACE_LEVEL")
    if raw is None or raw == "":
        return None
    try:
        return check_level(int(raw), "SCHED_TRACE_LEVEL")
    except ValueError:
        raise ValueError(
            f"SCHED_TRACE_LEVEL must be an integer from 0 (off) to {MAX_LEVEL}, got {raw!r}"
        ) from None


#: Called with the configured level after each change (``_instrument`` patches the targets
#: the level now reaches); a list here, so that this leaf imports nothing above it.
level_listeners: list[Callable[[int], None]] = []


def set_level(level: int) -> None:
    """Change the verbosity level at run time (0 turns tracing off)."""
    LEVEL.configured = check_level(level)
    LEVEL.update()
    for listener in list(level_listeners):
        listener(LEVEL.configured)


def get_level() -> int:
    return LEVEL.configured


def is_enabled(level: int) -> bool:
    return level <= LEVEL.active


def register_stage(name: str, level: int, parent: Optional[str] = None) -> StageSpec:
    """Declare a stage. Each declaration keeps its own level: two libraries may both
    call a stage ``forward``. The registry describes the latest declaration."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"stage name must be a non-empty string, got {name!r}")
    spec = StageSpec(name, check_level(level, f"level of stage {name!r}"), parent)
    with _lock:
        _registry[name] = spec
    return spec


def get_stage(name: str) -> Optional[StageSpec]:
    return _registry.get(name)


def stages() -> dict[str, StageSpec]:
    return dict(_registry)
