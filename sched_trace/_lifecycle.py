"""Process life: configured until shut down, and exported at exit, by SIGTERM too.

This module owns the end of a process's tracing: :func:`flush` and :func:`shutdown`
(the public ``sched_trace.flush``/``shutdown``), the ``atexit`` hook that runs
``shutdown`` at interpreter exit, and the SIGTERM handler.

Python's default SIGTERM action ends the process on the spot: no ``atexit``, so
events still buffered (and the exporter processes' last frames) would be lost,
and SIGTERM is what Kubernetes, Slurm and ``torchrun`` send. :func:`install`
(run by :func:`sched_trace.configure`, from the main thread only) puts a handler
in place that runs :func:`shutdown` within :func:`exit_timeout` and then ends the
process as the default action would: the signal is raised again with the default
disposition, so the exit status is the same.

A program with a SIGTERM handler of its own keeps it: sched-trace flushes and then
calls it, also when the program installs it after ``configure`` (``signal.signal``
and ``signal.getsignal`` are wrapped for SIGTERM, so the program sees its own
handler). ``SIG_IGN`` stays ignored. ``SCHED_TRACE_HANDLE_SIGTERM=0`` turns all of
this off. Normal exit, ``sys.exit``, an uncaught exception and Ctrl-C (SIGINT
raises KeyboardInterrupt) all reach ``atexit``, where shutdown runs anyway.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Optional, Union

from . import _level_file, recorder
from ._manager import get_manager

log = logging.getLogger("sched_trace")

DEFAULT_EXIT_TIMEOUT = 5.0
Handler = Union[Callable[[int, Any], Any], int, None]

_state: dict[str, Any] = {"installed": False, "program_handler": signal.SIG_DFL, "handling": False}
#: Held by configure and shutdown: a process is configured (with ``config``) until shut down.
lock = threading.RLock()
process: dict[str, Any] = {"configured": False, "config": None, "shut_down": False}
_original_signal = signal.signal
_original_getsignal = signal.getsignal


def exit_timeout() -> float:
    """Seconds the exit-time shutdown may take: ``SCHED_TRACE_EXIT_TIMEOUT``, default 5."""
    raw = os.environ.get("SCHED_TRACE_EXIT_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_EXIT_TIMEOUT
    except ValueError:
        log.warning("sched-trace: SCHED_TRACE_EXIT_TIMEOUT=%r is not a number; using %s s", raw,
                    DEFAULT_EXIT_TIMEOUT)
        return DEFAULT_EXIT_TIMEOUT
    return max(0.0, value)


def enabled_by_env() -> bool:
    return os.environ.get("SCHED_TRACE_HANDLE_SIGTERM", "1").strip().lower() not in ("0", "false", "no", "off")


def install() -> bool:
    """Put the SIGTERM handler in place; False where it cannot (not the main thread) or must not."""
    if _state["installed"]:
        return True
    if not enabled_by_env() or threading.current_thread() is not threading.main_thread():
        return False
    current = _original_getsignal(signal.SIGTERM)
    if current == signal.SIG_IGN or current is None:  # ignored, or set outside Python: leave it be
        return False
    try:
        _original_signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # a sub-interpreter, or a platform without SIGTERM handlers
        return False
    _state.update(installed=True, program_handler=current)
    signal.signal, signal.getsignal = _signal, _getsignal
    return True


def uninstall() -> None:
    """Give SIGTERM back to the program's own handler (or the default)."""
    if not _state["installed"] or threading.current_thread() is not threading.main_thread():
        return  # off the main thread the handler cannot be changed: it stays, still chaining
    signal.signal, signal.getsignal = _original_signal, _original_getsignal
    _original_signal(signal.SIGTERM, _state["program_handler"])
    _state.update(installed=False, program_handler=signal.SIG_DFL)


def _signal(signalnum: int, handler: Handler) -> Handler:
    """``signal.signal`` while sched-trace holds SIGTERM: the program's handler is chained."""
    holding = signalnum == signal.SIGTERM and _state["installed"]
    if not holding or threading.current_thread() is not threading.main_thread():
        return _original_signal(signalnum, handler)  # off the main thread: its ValueError
    previous = _state["program_handler"]
    if handler == signal.SIG_IGN:  # the program opts out of SIGTERM: sched-trace lets go too
        uninstall()
        _original_signal(signal.SIGTERM, handler)
    else:
        _state["program_handler"] = handler
    return previous


def _getsignal(signalnum: int) -> Handler:
    if signalnum == signal.SIGTERM and _state["installed"]:
        return _state["program_handler"]
    return _original_getsignal(signalnum)


def _on_sigterm(signum: int, frame: Any) -> Any:
    handler = _state["program_handler"]
    if not _state["handling"]:  # a second SIGTERM while flushing goes straight on
        _state["handling"] = True
        try:
            _export_before_exit(handler)
        finally:
            _state["handling"] = False
    if callable(handler):
        return handler(signum, frame)
    # The default action: end the process by this signal, so the exit status says so.
    uninstall()
    _original_signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # not reached: the signal ends the process first


def _export_before_exit(handler: Optional[Handler]) -> None:
    try:
        if callable(handler):
            # The program's handler decides whether the process ends: export, stay configured.
            flush(timeout=exit_timeout())
        else:
            shutdown(timeout=exit_timeout())
    except Exception as exc:  # never keep the process from ending
        log.warning("sched-trace: exporting on SIGTERM failed: %r", exc)


# --- flush and shutdown: what ends a process's tracing -------------------------


def started(config: Any) -> None:
    """``configure`` is done: the process is configured with ``config`` until :func:`shutdown`."""
    install()  # SIGTERM exports before the process ends (main thread only)
    process.update(configured=True, config=config, shut_down=False)


def flush(timeout: float = 5.0) -> None:
    """Ask every plugin to export what it buffered; returns within ``timeout`` (one
    deadline shared by all plugins, each given the time left)."""
    get_manager().call_until("sched_trace_flush", time.monotonic() + timeout)


def shutdown(timeout: float = 5.0) -> None:
    """Flush every exporter, then stop them, all within ``timeout`` seconds (plus a
    fraction of a second). Safe to call twice; runs at exit and on SIGTERM too.

    What cannot be delivered by then is counted in each plugin's :func:`sched_trace.stats`
    (``abandoned``, ``unconfirmed_at_shutdown``) and never waited for.
    """
    with lock:
        if process["shut_down"]:
            return
        process["shut_down"] = True
        _level_file.stop()
        deadline = time.monotonic() + timeout
        manager = get_manager()
        manager.call_until("sched_trace_flush", deadline)
        manager.call_until("sched_trace_shutdown", deadline)
        recorder.shutdown_all(max(0.0, deadline - time.monotonic()))
        manager.forget_config()
        process.update(configured=False, config=None)
        uninstall()


@atexit.register
def _shutdown_at_exit() -> None:
    shutdown(timeout=exit_timeout())
