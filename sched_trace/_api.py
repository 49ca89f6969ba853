"""configure / register / stats: setting a process up, and what it reports.

``flush`` and ``shutdown`` live in ``_lifecycle``, which also runs them at exit
and on SIGTERM.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterable, Optional

from . import _extract, _instrument, _level_file, _lifecycle, _manager, _probe, _stages
from . import config as _config
from ._errors import ConfigError, InstrumentationError
from ._manager import get_manager


def configure(
    level: Optional[int] = None,
    config: Any = None,
    plugins: Iterable[object] = (),
    autoload: bool = True,
    profile: Optional[str] = None,
) -> _config.Config:
    """Set sched-trace up for this process. Idempotent: calling again only applies changes.

    :param level: verbosity (0 off .. 9); default ``SCHED_TRACE_LEVEL``, the config
        file's ``level``, else 4. A level file (``SCHED_TRACE_LEVEL_FILE``, the config's
        ``level_file``) overrides it while the file holds a level (``sched-trace level``).
    :param config: a path to a TOML file, a mapping, a ``Config``, or None for
        ``SCHED_TRACE_CONFIG``.
    :param plugins: plugin objects to register in addition to the entry points.
    :param autoload: load plugins from the ``sched_trace`` entry-point group (also
        off when ``SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD=1`` or ``autoload = false``).
    :param profile: a shipped instrumentation profile to apply (``torch-pipelining``).
    """
    with _lifecycle.lock:
        cfg = _config.resolve(config)
        if profile is not None:
            cfg = _config.merge(cfg, _config.load_profile(profile, "configure(profile=...)"))
        chosen = level if level is not None else _stages.level_from_env()
        if chosen is None:
            chosen = cfg.level if cfg.level is not None else _stages.DEFAULT_LEVEL
        level_file = cfg.level_file  # checked and made absolute when the config was parsed
        if os.environ.get(_level_file.ENV):  # wins over the config's, as SCHED_TRACE_LEVEL does
            try:
                level_file = _level_file.check_path(os.environ[_level_file.ENV], _level_file.ENV)
            except ValueError as exc:
                raise ConfigError(str(exc), source=cfg.source, key="level_file") from None
        _level_file.follow(level_file, chosen, _lifecycle.lock)  # the file's level while it holds one, else chosen
        _register_plugins(cfg, plugins, autoload)
        state = _lifecycle.process
        if state["config"] != cfg or not state["configured"]:
            manager = get_manager()
            previous = manager._config
            try:
                manager.configure(cfg)
            except ConfigError:
                manager._config = previous  # a rejected config must not reach later plugins
                raise
        _apply_targets(cfg)
        _lifecycle.started(cfg)
        return cfg


def _register_plugins(cfg: _config.Config, plugins: Iterable[object], autoload: bool) -> None:
    manager = get_manager()
    for name in (*_manager.blocked_from_env(), *cfg.block):
        manager.set_blocked(name)
    if os.environ.get("SCHED_TRACE_CAPTURE_DIR"):  # a test gathers this process's events
        from . import capture

        capture.install_from_env(manager)
    for plugin in plugins:
        if manager.get_name(plugin) is None:
            manager.register(plugin)
    if autoload and cfg.autoload and not _manager.autoload_disabled_by_env() and not manager.entry_points_loaded:
        manager.load_entry_points()


def _apply_targets(cfg: _config.Config) -> None:
    for spec in cfg.instrument:
        options = dict(spec.options)
        try:
            _instrument.instrument(spec.target, options.pop("stage", None), options.pop("level", None), **options)
        except (InstrumentationError, ValueError) as exc:
            raise ConfigError(str(exc), source=spec.where.split(": ")[0], key=spec.where.split(": ")[-1]) from None


def register(plugin: object, name: Optional[str] = None) -> Optional[str]:
    """Register a plugin object (module, class instance ...); returns its name."""
    return get_manager().register(plugin, name)


def unregister(plugin: object = None, name: Optional[str] = None) -> Any:
    """Unregister a plugin, given the object or its name; returns the plugin."""
    return get_manager().unregister(plugin, name)


def threads_cpu() -> dict[str, float]:
    """CPU seconds each thread sched-trace runs in this process has used so far, by thread
    name (``sched-trace-otel``: an exporter thread; ``sched-trace-otel-replies``: its
    exporter process's reply reader; ``sched-trace-watchdog`` ...), from the thread's own
    clock: what tracing costs the process beside the scheduler thread's share."""
    spent: dict[str, float] = {}
    for thread in threading.enumerate():
        if not thread.name.startswith("sched-trace-") or thread.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, AttributeError):  # ended meanwhile, or no per-thread clocks here
            continue
        spent[thread.name] = spent.get(thread.name, 0.0) + seconds
    return spent


def stats() -> dict[str, Any]:
    """Counters that make loss visible: plugin errors, drops, unreadable extractors;
    ``dormant_targets``, the targets waiting unpatched for the level to reach theirs;
    ``level_file``, the level file followed (its level, changes applied, contents refused), or None;
    ``idle_calls``, the calls each ``keep_if`` stage dropped as idle; and
    ``threads_cpu_s``, the CPU sched-trace's own threads have used (:func:`threads_cpu`)."""
    manager = get_manager()
    per_plugin = {}
    for name, result in manager.call("sched_trace_collect_stats"):
        if result:
            per_plugin[name] = dict(result)
    return {
        "level": _stages.get_level(),
        "plugin_errors": dict(manager.errors),
        "plugin_late": dict(manager.late),
        "plugins_quarantined": dict(manager.quarantined),
        "extract_missing": dict(_extract.missing),
        "unresolved_targets": list(_instrument.unresolved),
        "level_file": _level_file.stats(),
        "dormant_targets": [handle.target for handle in _instrument.handles() if handle.state == "dormant"],
        "idle_calls": {name: count for name, count in _probe.idle_calls.items() if count},
        "plugins": per_plugin,
        "threads_cpu_s": threads_cpu(),
    }


def reset_stats() -> None:
    """Zero the counters of :func:`stats` (plugins keep their own)."""
    manager = get_manager()
    manager.errors.clear()
    manager.late.clear()
    manager._logged.clear()  # so an error logged before the reset is logged again
    _extract.missing.clear()
    del _instrument.unresolved[:]
    for name in _probe.idle_calls:  # the names stay: the hot path adds to them
        _probe.idle_calls[name] = 0
