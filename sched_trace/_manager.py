"""The plugin manager: entry points, register/block, and fault-isolated dispatch.

pluggy validates plugins and orders implementations; calls go through cached
per-hook call lists (rebuilt on every register/unregister) in which each
implementation is guarded on its own, so one failing plugin neither breaks the
scheduler nor keeps the event from the others.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Optional

import pluggy

from . import _hookspecs
from ._watchdog import HookWatchdog, budget_from_env, code_of
from ._errors import ConfigError, PluginError
from ._stages import LEVEL
from .recorder import c_form, never_blocks

log = logging.getLogger("sched_trace")

ENTRY_POINT_GROUP = "sched_trace"
EVENT_HOOKS = (
    "sched_trace_batch_start",
    "sched_trace_batch_end",
    "sched_trace_stage_start",
    "sched_trace_stage_end",
    "sched_trace_request",
)
Call = tuple[Callable[..., Any], str]
#: How far past a flush/shutdown deadline a plugin may return before it counts as late.
LATE_GRACE_S = 0.5
#: Indices of ``PluginManager.event_calls``, in EVENT_HOOKS order.
BATCH_START, BATCH_END, STAGE_START, STAGE_END, REQUEST = range(5)


class _Manager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin: object, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("sched_trace_"):
            # Unmarked functions named like hooks count as hooks, so a misspelled
            # name fails in check_pending() instead of being silently ignored.
            method = getattr(plugin, name, None)
            if callable(method):
                opts = {}
        return opts


class PluginManager:
    """sched-trace's plugin manager; one per process (:func:`get_manager`)."""

    def __init__(self) -> None:
        self._pm = _Manager(_hookspecs.PROJECT)
        self._pm.add_hookspecs(_hookspecs)
        self._lock = threading.RLock()
        self.errors: Counter[str] = Counter()
        self.late: Counter[str] = Counter()  # flush/shutdown calls that overran their deadline
        self.quarantined: dict[str, float] = {}  # plugin -> seconds its blocked hook had run
        self._watchdog = HookWatchdog(self.quarantine, budget_from_env())
        self._logged: set[tuple[str, str, str]] = set()
        self._config: Any = None
        # Guarded call lists of the four event hooks, in EVENT_HOOKS order, updated in
        # place, so probes hold the list and read their hook's calls with one subscript.
        self.event_calls: list[tuple[Call, ...]] = [() for _ in EVENT_HOOKS]
        self.entry_points_loaded = False

    # --- registration ------------------------------------------------------

    def register(self, plugin: object, name: Optional[str] = None) -> Optional[str]:
        """Register ``plugin``; returns its name, or None when the name is blocked."""
        with self._lock:
            if name is not None and self._pm.is_blocked(name):
                return None
            try:
                registered = self._pm.register(plugin, name)
            except ValueError as exc:
                raise PluginError(plugin, str(exc)) from None
            except pluggy.PluginValidationError as exc:
                raise PluginError(plugin, str(exc)) from None
            if registered is None:
                return None
            try:
                self._validate(plugin)
            except Exception:
                self._pm.unregister(plugin)
                raise
            self._rebuild()
            if self._config is not None:
                self._configure_one(plugin, registered)
            return registered

    def _validate(self, plugin: object) -> None:
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            names = ", ".join(sorted(self._pm.hook.__dict__))
            raise PluginError(
                plugin, f"{exc}. Known hooks: {names}. Check the spelling of the hook name."
            ) from None
        for hook_name in EVENT_HOOKS:
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                    raise PluginError(
                        plugin,
                        f"{hook_name} in plugin {impl.plugin_name!r} is a hook wrapper; "
                        "event hooks take plain implementations only",
                    )

    def unregister(self, plugin: object = None, name: Optional[str] = None) -> Any:
        with self._lock:
            name = name if name is not None else self._pm.get_name(plugin)
            removed = self._pm.unregister(plugin, name)
            self.quarantined.pop(name, None)  # registering it again starts it afresh
            self._rebuild()
            return removed

    def quarantine(self, name: str, blocked_s: float) -> None:
        """Take a plugin whose event hook blocked past the budget out of event dispatch."""
        with self._lock:
            if name in self.quarantined or self._pm.get_plugin(name) is None:
                return
            self.quarantined[name] = blocked_s
            self._rebuild()
        log.error("sched-trace plugin %r blocked the scheduler thread in an event hook for %.2f s; "
                  "it gets no more events (sched_trace.stats()['plugins_quarantined']). Event hooks "
                  "must only append and return; do slow work on a thread of the plugin's own.",
                  name, blocked_s)

    def set_blocked(self, name: str) -> None:
        with self._lock:
            plugin = self._pm.get_plugin(name)
            if plugin is not None:
                self.unregister(plugin)
            self._pm.set_blocked(name)

    def is_blocked(self, name: str) -> bool:
        return self._pm.is_blocked(name)

    def unblock(self, name: str) -> None:
        self._pm.unblock(name)

    def get_plugin(self, name: str) -> Any:
        return self._pm.get_plugin(name)

    def get_name(self, plugin: object) -> Optional[str]:
        return self._pm.get_name(plugin)

    def list_name_plugin(self) -> list[tuple[str, Any]]:
        """Registered (name, plugin) pairs; blocked names are not listed."""
        return [(name, plugin) for name, plugin in self._pm.list_name_plugin() if plugin is not None]

    def load_entry_points(self) -> list[str]:
        """Register every plugin of the ``sched_trace`` entry-point group not blocked."""
        loaded = []
        with self._lock:
            self.entry_points_loaded = True
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if self._pm.is_blocked(ep.name) or self._pm.get_plugin(ep.name) is not None:
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:
                    self._count_error(ep.name, "load", exc)
                    continue
                if isinstance(plugin, type):
                    plugin = plugin()
                if self.register(plugin, name=ep.name) is not None:
                    loaded.append(ep.name)
        return loaded

    def _rebuild(self) -> None:
        hook = self._pm.hook
        codes: dict[Any, list[tuple[object, str]]] = {}
        for index, hook_name in enumerate(EVENT_HOOKS):
            impls = [impl for impl in reversed(getattr(hook, hook_name).get_hookimpls())
                     if impl.plugin_name not in self.quarantined]
            self.event_calls[index] = tuple((_positional(impl), impl.plugin_name) for impl in impls)
            for impl in impls:
                if never_blocks(impl.function):  # the built-in buffers' append: nothing to watch
                    continue
                code = code_of(impl.function)
                if code is not None and (impl.plugin, impl.plugin_name) not in codes.get(code, ()):
                    codes.setdefault(code, []).append((impl.plugin, impl.plugin_name))
        LEVEL.listening = any(self.event_calls)
        LEVEL.update()
        self._watchdog.watch(codes)

    # Named views of event_calls, for code off the hot path.
    batch_start = property(lambda self: self.event_calls[BATCH_START])
    batch_end = property(lambda self: self.event_calls[BATCH_END])
    stage_start = property(lambda self: self.event_calls[STAGE_START])
    stage_end = property(lambda self: self.event_calls[STAGE_END])

    # --- dispatch ----------------------------------------------------------

    def fire(self, calls: tuple[Call, ...], event: Any) -> None:
        """Hand ``event`` to each implementation; a raising one is counted, never raised."""
        for function, owner in calls:
            try:
                function(event)
            except Exception as exc:
                self._count_error(owner, event.kind, exc)

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a non-event hook, guarded per implementation; returns (plugin, result) pairs."""
        results = []
        for impl in reversed(getattr(self._pm.hook, hook_name).get_hookimpls()):
            try:
                args = [kwargs[arg] for arg in impl.argnames]
                results.append((impl.plugin_name, impl.function(*args)))
            except ConfigError:
                raise
            except Exception as exc:
                self._count_error(impl.plugin_name, hook_name, exc)
        return results

    def call_until(self, hook_name: str, deadline: float, **kwargs: Any) -> list[tuple[str, Any]]:
        """Like :meth:`call`, each implementation given ``timeout`` = the time left to ``deadline``
        (one deadline for all, not one timeout each); one that returns past it is counted
        in ``late``."""
        results = []
        for impl in reversed(getattr(self._pm.hook, hook_name).get_hookimpls()):
            kwargs["timeout"] = max(0.0, deadline - time.monotonic())
            try:
                results.append((impl.plugin_name, impl.function(*[kwargs[arg] for arg in impl.argnames])))
            except Exception as exc:
                self._count_error(impl.plugin_name, hook_name, exc)
            if time.monotonic() > deadline + LATE_GRACE_S:
                self.late[impl.plugin_name] += 1
        return results

    def configure(self, config: Any) -> None:
        self._config = config
        self.call("sched_trace_configure", config=config)

    def _configure_one(self, plugin: object, name: str) -> None:
        for impl in self._pm.hook.sched_trace_configure.get_hookimpls():
            if impl.plugin is plugin:
                try:
                    impl.function(*[self._config for _ in impl.argnames])
                except ConfigError:
                    self._pm.unregister(plugin)
                    self._rebuild()
                    raise
                except Exception as exc:
                    self._count_error(name, "sched_trace_configure", exc)

    def forget_config(self) -> None:
        self._config = None

    def _count_error(self, plugin_name: str, where: str, exc: BaseException) -> None:
        self.errors[plugin_name] += 1
        key = (plugin_name, where, type(exc).__name__)  # once per kind of error, then counted
        if key not in self._logged:
            self._logged.add(key)
            log.error(
                "sched-trace plugin %r raised in %s; the scheduler carries on and further "
                "errors are only counted (sched_trace.stats()['plugin_errors'])",
                plugin_name, where, exc_info=exc,
            )


def _positional(impl: Any) -> Callable[..., Any]:
    if impl.argnames == ("event",):
        return c_form(impl.function)
    if not impl.argnames:
        function = impl.function
        return lambda event: function()
    raise PluginError(impl.plugin, f"{impl.function!r} must take the parameter 'event'")


_manager: Optional[PluginManager] = None
_manager_lock = threading.Lock()


def get_manager() -> PluginManager:
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = PluginManager()
                for name in blocked_from_env():
                    _manager.set_blocked(name)
    return _manager


def blocked_from_env() -> list[str]:
    raw = os.environ.get("SCHED_TRACE_BLOCK", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def autoload_disabled_by_env() -> bool:
    return os.environ.get("SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD", "").lower() in ("1", "true", "yes")
