"""``python sglang_switch.py ARGS``: an SGLang server (``python -m sglang.launch_server ARGS``)
whose scheduler runs its loop iterations traced and untraced in turns.

Run under ``sched-trace run --profile sglang`` by ``python -m benchmarks.bench_engines
--sglang-interleaved``. SGLang starts its scheduler processes with multiprocessing's spawn,
which runs this file's top level again in each (as ``__mp_main__``), after sched-trace's
bootstrap has instrumented SGLang. There, ``Scheduler.ingest_requests`` (not a target: the
first call of every iteration of SGLang's event loop) marks the iteration boundary: it
reads the scheduler thread's CPU clock and the wall clock, writes the iteration just ended
(traced or not, its batch's forward mode and size, from SGLang's own
``cur_batch_for_debug``), then sets every active target's class attribute to
sched-trace's proxy or to SGLang's own function for the next iteration: pairs of
iterations, one of each, the order alternating from pair to pair. One unbuffered line
per iteration in ``$SGLANG_SWITCH_DIR/<pid>.txt``: SGLang's SIGKILL at shutdown loses
none. The line's last number is the CPU sched-trace's own threads used while the
iteration ran. Every 64 iterations an ``E`` line gives the exporter threads' CPU in
export() so far, the frames they encoded in C and with the pickler, and the CPU of all of
sched-trace's threads.
"""

from __future__ import annotations

import os
import time

from sglang.srt.managers.scheduler import Scheduler

_directory = os.environ["SGLANG_SWITCH_DIR"]
_ingest = Scheduler.ingest_requests
_state: dict = {"count": 0, "pending": None, "fd": None, "handles": None}


def _active_handles() -> list:
    from sched_trace._instrument import handles

    return [handle for handle in handles() if handle.active]


def _exporter_threads() -> str:
    """The exporter threads' CPU in export() so far, the frames they encoded in C and with the
    pickler, and the CPU of every thread sched-trace runs here (vllm_engine.py says which)."""
    import sched_trace

    stats = sched_trace.stats()
    plugins = stats["plugins"].values()
    return " ".join([str(sum(plugin.get(key, 0) for plugin in plugins))
                     for key in ("thread_cpu_s", "frames_in_c", "frames_in_python")]
                    + [str(sum(stats["threads_cpu_s"].values()))])


def _own_threads_ns() -> int:
    """The CPU of sched-trace's threads here (exporter threads, reply readers), summed
    (``stats()["threads_cpu_s"]``, without asking the plugins): which iterations an
    exporter frame ran in, and for how long (bench_engines.frame_stall)."""
    from sched_trace._api import threads_cpu

    return int(sum(threads_cpu().values()) * 1e9)


def ingest_requests(self, *args, **kwargs):
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    ours = _own_threads_ns()
    state = _state
    if state["fd"] is None:
        os.makedirs(_directory, exist_ok=True)
        state["fd"] = os.open(os.path.join(_directory, f"{os.getpid()}.txt"),
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        state["handles"] = _active_handles()
    if state["pending"] is not None:
        traced, ours0, cpu0, wall0 = state["pending"]
        batch = getattr(self, "cur_batch_for_debug", None)
        mode = batch.forward_mode.name if batch is not None else "IDLE"
        size = len(batch.reqs) if batch is not None else 0
        line = f"{int(traced)} {cpu - cpu0} {wall - wall0} {mode} {size} {max(0, ours - ours0)}\n"
        if state["count"] % 64 == 0:
            line += f"E {_exporter_threads()}\n"
        os.write(state["fd"], line.encode())
    pair, second = divmod(state["count"], 2)
    traced = (pair % 2 == 0) == bool(second)  # pairs: untraced-traced, then traced-untraced
    state["count"] += 1
    for handle in state["handles"]:
        setattr(handle.owner, handle.path[-1], handle.proxy if traced else handle.original)
    ours = _own_threads_ns()
    state["pending"] = (traced, ours, time.thread_time_ns(), time.perf_counter_ns())
    return _ingest(self, *args, **kwargs)


Scheduler.ingest_requests = ingest_requests

if __name__ == "__main__":  # what `python -m sglang.launch_server` does, with this file as __main__
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "sglang"))
    from sglang_launch import main

    main(sys.argv[1:])
