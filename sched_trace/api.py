"""configure / shutdown / register / stats: the lifecycle behind the public names."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterable, Optional

from . import config as _config
from . import extract, instrument as _instrument, lifecycle, plugins as _plugins, recorder, stages
from .errors import ConfigError, InstrumentationError
from .plugins import get_manager

_lock = threading.RLock()
_state: dict[str, Any] = {"configured": False, "config": None, "shut_down": False}


def configure(
    level: Optional[int] = None,
    config: Any = None,
    plugins: Iterable[object] = (),
    autoload: bool = True,
    profile: Optional[str] = None,
) -> _config.Config:
    """Set sched-trace up for this process. Idempotent: calling again only applies changes.

    :param level: verbosity (0 off .. 9); default ``SCHED_TRACE_LEVEL``, the config
        file's ``level``, else 4.
    :param config: a path to a TOML file, a mapping, a ``Config``, or None for
        ``SCHED_TRACE_CONFIG``.
    :param plugins: plugin objects to register in addition to the entry points.
    :param autoload: load plugins from the ``sched_trace`` entry-point group (also
        off when ``SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD=1`` or ``autoload = false``).
    :param profile: a shipped instrumentation profile to apply (``torch-pipelining``).
    """
    with _lock:
        cfg = _config.resolve(config)
        if profile is not None:
            extra = _config.load_profile(profile, "configure(profile=...)")
            cfg = _merge(cfg, extra)
        chosen = level if level is not None else stages.level_from_env()
        if chosen is None:
            chosen = cfg.level if cfg.level is not None else stages.DEFAULT_LEVEL
        stages.set_level(chosen)
        manager = get_manager()
        for name in (*_plugins.blocked_from_env(), *cfg.block):
            manager.set_blocked(name)
        if os.environ.get("SCHED_TRACE_CAPTURE_DIR"):  # a test gathers this process's events
            from . import capture

            capture.install_from_env(manager)
        for plugin in plugins:
            if manager.get_name(plugin) is None:
                manager.register(plugin)
        if autoload and cfg.autoload and not _plugins.autoload_disabled_by_env() and not manager.entry_points_loaded:
            manager.load_entry_points()
        if _state["config"] != cfg or not _state["configured"]:
            previous = manager._config
            try:
                manager.configure(cfg)
            except ConfigError:
                manager._config = previous  # a rejected config must not reach later plugins
                raise
        _apply_targets(cfg)
        lifecycle.install()  # SIGTERM exports before the process ends (main thread only)
        _state.update(configured=True, config=cfg, shut_down=False)
        return cfg


def _merge(base: _config.Config, extra: _config.Config) -> _config.Config:
    from dataclasses import replace

    return replace(base, profiles=base.profiles + (extra.source,), instrument=extra.instrument + base.instrument)


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
    return get_manager().unregister(plugin, name)


def flush(timeout: float = 5.0) -> None:
    """Ask every plugin to export what it buffered; returns within ``timeout`` (one
    deadline shared by all plugins, each given the time left)."""
    get_manager().call_until("sched_trace_flush", time.monotonic() + timeout)


def shutdown(timeout: float = 5.0) -> None:
    """Flush every exporter, then stop them, all within ``timeout`` seconds (plus a
    fraction of a second). Safe to call twice; runs at exit and on SIGTERM too.

    What cannot be delivered by then is counted in each plugin's :func:`stats`
    (``abandoned``, ``unconfirmed_at_shutdown``) and never waited for.
    """
    with _lock:
        if _state["shut_down"]:
            return
        _state["shut_down"] = True
        deadline = time.monotonic() + timeout
        manager = get_manager()
        manager.call_until("sched_trace_flush", deadline)
        manager.call_until("sched_trace_shutdown", deadline)
        recorder.shutdown_all(max(0.0, deadline - time.monotonic()))
        manager.forget_config()
        _state["configured"] = False
        _state["config"] = None
        lifecycle.uninstall()


def stats() -> dict[str, Any]:
    """Counters that make loss visible: plugin errors, drops, unreadable extractors."""
    manager = get_manager()
    per_plugin = {}
    for name, result in manager.call("sched_trace_collect_stats"):
        if result:
            per_plugin[name] = dict(result)
    return {
        "level": stages.get_level(),
        "plugin_errors": dict(manager.errors),
        "plugin_late": dict(manager.late),
        "plugins_quarantined": dict(manager.quarantined),
        "extract_missing": dict(extract.missing),
        "unresolved_targets": list(_instrument.unresolved),
        "plugins": per_plugin,
    }


def reset_stats() -> None:
    get_manager().errors.clear()
    get_manager().late.clear()
    get_manager()._logged.clear()  # so an error logged before the reset is logged again
    extract.missing.clear()
    del _instrument.unresolved[:]
