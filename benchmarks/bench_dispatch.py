"""Hook dispatch: sched-trace's cached, guarded call lists against pluggy's own hook call.

Both sides dispatch the same StageEvent to the same no-op implementations of
``sched_trace_stage_end``: pluggy through ``pm.hook.sched_trace_stage_end(event=...)``
on a plain PluginManager, sched-trace through ``PluginManager.fire`` over the call
list it rebuilds on register/unregister (each implementation guarded on its own).
"""

from __future__ import annotations

from typing import Any

import pluggy

from sched_trace import _hookspecs as hookspecs, hookimpl
from sched_trace._manager import STAGE_END, get_manager

from . import workload
from .harness import compare, interleave


class NoopPlugin:
    @hookimpl
    def sched_trace_stage_end(self, event: Any) -> None:
        pass


def _sample_event() -> Any:
    recorder = workload.ListPlugin()
    workload.configure(plugins=(recorder,))
    workload.caller("traced")(1)
    workload.reset()
    return recorder.events[0]


def run(quick: bool) -> list[dict[str, Any]]:
    n, repeats = (20000, 5) if quick else (100000, 15)
    event = _sample_event()
    rows = []
    for count in (0, 1, 4):
        plain = pluggy.PluginManager(hookspecs.PROJECT)
        plain.add_hookspecs(hookspecs)
        for _ in range(count):
            plain.register(NoopPlugin())
        hook = plain.hook.sched_trace_stage_end

        def pluggy_call(calls: int) -> None:
            for _ in range(calls):
                hook(event=event)

        workload.configure(plugins=tuple(NoopPlugin() for _ in range(count)))
        manager = get_manager()
        call_lists, fire = manager.event_calls, manager.fire

        def ours(calls: int) -> None:
            for _ in range(calls):
                call_list = call_lists[STAGE_END]
                if call_list:
                    fire(call_list, event)

        samples = interleave({"pluggy": pluggy_call, "sched_trace": ours}, n, repeats)
        workload.reset()
        rows.append(compare(samples, f"{count} plugin(s): cached guarded call list vs pm.hook.x(event=...)",
                            "sched_trace", "pluggy", unit="ns/event", limit=1.0, group="hook dispatch"))
    return rows
