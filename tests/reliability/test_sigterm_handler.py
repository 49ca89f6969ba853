"""The SIGTERM handler's contract, in process: who holds SIGTERM, and what the program sees."""

from __future__ import annotations

import signal
import threading

import pytest

import sched_trace
from sched_trace import _lifecycle as lifecycle


@pytest.fixture(autouse=True)
def _sigterm_restored():
    lifecycle.uninstall()  # an earlier test may have configured without shutting down
    before = signal.getsignal(signal.SIGTERM)
    yield
    sched_trace.shutdown()
    lifecycle.uninstall()
    signal.signal(signal.SIGTERM, before)


def own_handler(signum, frame):
    pass


def test_configure_holds_sigterm_and_shutdown_gives_it_back():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sched_trace.configure(level=4, autoload=False)
    assert lifecycle._original_getsignal(signal.SIGTERM) is lifecycle._on_sigterm
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # what the program set
    sched_trace.shutdown()
    assert lifecycle._original_getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_handler_set_after_configure_is_chained_and_seen_by_the_program():
    sched_trace.configure(level=4, autoload=False)
    previous = signal.signal(signal.SIGTERM, own_handler)
    assert previous == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is own_handler
    assert lifecycle._original_getsignal(signal.SIGTERM) is lifecycle._on_sigterm
    sched_trace.shutdown()
    assert lifecycle._original_getsignal(signal.SIGTERM) is own_handler


def test_sig_ign_hands_sigterm_back_to_the_program():
    sched_trace.configure(level=4, autoload=False)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    assert lifecycle._original_getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.signal is lifecycle._original_signal


def test_an_ignored_sigterm_stays_ignored():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sched_trace.configure(level=4, autoload=False)
    assert lifecycle._original_getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_configure_off_the_main_thread_installs_nothing():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    done = []
    thread = threading.Thread(target=lambda: done.append(sched_trace.configure(level=4, autoload=False)))
    thread.start()
    thread.join(30)
    assert done and lifecycle._original_getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("SCHED_TRACE_HANDLE_SIGTERM", "0")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sched_trace.configure(level=4, autoload=False)
    assert lifecycle._original_getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("raw, seconds", [("", 5.0), ("2.5", 2.5), ("soon", 5.0), ("-1", 0.0)])
def test_exit_timeout_from_the_environment(monkeypatch, raw, seconds):
    monkeypatch.setenv("SCHED_TRACE_EXIT_TIMEOUT", raw)
    assert lifecycle.exit_timeout() == seconds
