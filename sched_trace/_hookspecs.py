"""Every hook sched-trace calls, documented once.

A plugin implements any subset of these as functions or methods with the same
name, marked with :data:`sched_trace.hookimpl` (or merely named ``sched_trace_*``).
Hooks are called with keyword arguments; an implementation may accept fewer
parameters than the spec lists.

Event hooks (``*_start``/``*_end`` and ``sched_trace_request``) run on the scheduler thread: an
implementation must only record the event (append it to a buffer) and return.
Each implementation is guarded: if it raises, the error is counted against its
plugin (see :func:`sched_trace.stats`), logged once, and the other plugins still
receive the event. ``hookwrapper``/``wrapper`` implementations are not supported
for event hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:
    from .config import Config
    from ._events import BatchEvent, RequestEvent, StageEvent

PROJECT = "sched_trace"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def sched_trace_configure(config: "Config") -> None:
    """Receive the active configuration.

    Fires when :func:`sched_trace.configure` runs, and again (historic) for every
    plugin registered later, so a late plugin still sees the configuration.

    :param config: the validated :class:`sched_trace.Config`. A plugin reads
        its own table with ``config.plugin_settings("name")``. Raising
        :class:`sched_trace.ConfigError` here reports a bad setting to the user;
        any other exception is counted and logged like an event hook's.
    """


@hookspec
def sched_trace_batch_start(event: "BatchEvent") -> None:
    """A batch (one scheduler step) is about to run.

    Fires on the scheduler thread before a function marked ``@batch`` or
    instrumented with ``kind="batch"`` runs, when its level is enabled.

    :param event: the :class:`~sched_trace.BatchEvent`, with ``end_ns`` and
        ``error`` still ``None``.
    """


@hookspec
def sched_trace_batch_end(event: "BatchEvent") -> None:
    """A batch finished, normally or by raising.

    Fires on the scheduler thread after the batch function returned or raised
    (for generators and coroutines: when they are exhausted or closed).

    :param event: the :class:`~sched_trace.BatchEvent` with ``end_ns`` set,
        and ``error`` set to the exception when the batch raised (the exception
        still propagates to the caller unchanged).
    """


@hookspec
def sched_trace_stage_start(event: "StageEvent") -> None:
    """A stage is about to run.

    Fires on the scheduler thread before a function marked ``@stage`` or
    instrumented with ``instrument(..., stage=...)`` runs, when its level is
    enabled.

    :param event: the :class:`~sched_trace.StageEvent`, with ``end_ns`` and
        ``error`` still ``None``.
    """


@hookspec
def sched_trace_stage_end(event: "StageEvent") -> None:
    """A stage finished, normally or by raising.

    Fires on the scheduler thread after the stage function returned or raised.
    This is the hook exporters need: the event carries start and end.

    :param event: the :class:`~sched_trace.StageEvent` with ``end_ns`` set,
        and ``error`` set to the exception when the stage raised.
    """


@hookspec
def sched_trace_request(event: "RequestEvent") -> None:
    """A request reached a phase of its life: arrived, queued, scheduled,
    first_token, finished or aborted.

    Fires on the thread that observed the phase (usually the scheduler thread),
    before a function instrumented with ``kind="request"`` runs (when its level is
    enabled and its ``when`` condition holds), or when code that owns its
    scheduler calls :func:`sched_trace.request_event`. O(1): one small tuple per
    call, whatever the batch size.

    :param event: the :class:`~sched_trace.RequestEvent`: ``phase``,
        ``ts_ns``, ``request_id``, ``rank``, ``prompt_tokens``, ``output_tokens``,
        ``batch_id`` (the batch open on this thread, if any) and ``attrs``. A phase
        may arrive more than once (``scheduled`` after a preemption): take the
        first arrived/queued/scheduled/first_token and the last finished/aborted.
    """


@hookspec
def sched_trace_flush(timeout: float) -> None:
    """Export everything buffered so far, waiting at most ``timeout`` seconds.

    Fires from :func:`sched_trace.flush` and before ``sched_trace_shutdown``; never
    on the scheduler's hot path.

    :param timeout: seconds this plugin may block.
    """


@hookspec
def sched_trace_shutdown(timeout: float) -> None:
    """Stop: release threads, processes and files.

    Fires once from :func:`sched_trace.shutdown` (also at interpreter exit and on
    SIGTERM), after ``sched_trace_flush``. No event hook fires after it until
    ``configure`` runs again.

    :param timeout: seconds left of the one deadline that :func:`sched_trace.shutdown`
        was given (flush and every plugin's stop share it); count what does not make it.
    """


@hookspec
def sched_trace_collect_stats() -> Mapping[str, Any]:
    """Report this plugin's counters (exported, dropped, errors ...).

    Fires from :func:`sched_trace.stats`; the mapping returned appears there under
    the plugin's name. Counters must be cheap to read.

    :return: a flat mapping of counter name to number.
    """
