"""A traced scheduler process that ends the way the test tells it to.

``python scheduler_child.py ENDING STAGES [--handler | --handler-after]``:
records STAGES ``run_batch_cpu`` stages through the otel and perfetto plugins
(settings from the environment), prints ``recorded N`` and then ends by ENDING:
``return``, ``sys_exit``, ``raise``, ``wait`` (sleep until a signal arrives) or
``stream`` (keep recording, one stage a millisecond, until killed; the count so
far, then how many of them the otel plugin has handed to its exporter process,
are kept in the 16-byte file ``CHILD_COUNTER``, which survives SIGKILL) or
``witness`` (keep recording until killed; the 32-byte ``CHILD_COUNTER`` holds the
count so far and what each file exporter last reported written: otel spans,
Perfetto slices, and, with ``CHILD_CHROME_DIR``, Chrome JSON slices).
With ``--handler`` (``--handler-after``) the program installs its own SIGTERM
handler before (after) ``configure``; it prints ``own handler`` and exits 3.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import time

import sched_trace


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch)")
def run_batch(batch: list, mb_id: int) -> int:
    return len(batch)


def own_handler(signum: int, frame: object) -> None:
    print("own handler", flush=True)
    sys.exit(3)


def main() -> None:
    ending, stages = sys.argv[1], int(sys.argv[2])
    # Ctrl-C as in a program started from a terminal, however the tests were started: a
    # shell's background job (`nohup pytest &`) ignores SIGINT, and its children inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    handler_first = "--handler" in sys.argv
    handler_after = "--handler-after" in sys.argv
    if handler_first:
        signal.signal(signal.SIGTERM, own_handler)
    from sched_trace_otel import OtelPlugin
    from sched_trace_perfetto import PerfettoPlugin

    plugins = [OtelPlugin(directory=os.environ["CHILD_OTEL_DIR"]),
               PerfettoPlugin(directory=os.environ["CHILD_PERFETTO_DIR"])]
    if os.environ.get("CHILD_CHROME_DIR"):
        plugins.append(PerfettoPlugin(directory=os.environ["CHILD_CHROME_DIR"], format="chrome"))
    sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=0, dp_rank=0)
    sched_trace.configure(level=9, plugins=plugins, autoload=False)
    if handler_after:
        signal.signal(signal.SIGTERM, own_handler)
    batch = [0] * 8
    for mb_id in range(stages):
        run_batch(batch, mb_id)
    print(f"recorded {stages}", flush=True)
    if ending == "sys_exit":
        sys.exit(0)
    if ending == "raise":
        raise RuntimeError("the scheduler crashed")
    if ending == "wait":
        while True:
            time.sleep(0.05)
    if ending == "stream":
        stream(batch, plugins[0])
    if ending == "witness":
        witness(batch, plugins)


def stream(batch: list, otel: object) -> None:
    with open(os.environ["CHILD_COUNTER"], "r+b") as handle:
        counter = mmap.mmap(handle.fileno(), 16)
        mb_id = 0
        while True:
            run_batch(batch, mb_id)
            mb_id += 1
            counter[:8] = struct.pack("<q", mb_id)  # after the stage returned: recorded
            if mb_id % 16 == 0:  # the witness of what the exporter process already holds
                counter[8:16] = struct.pack("<q", otel.sched_trace_collect_stats()["sent"])
            time.sleep(0.001)


def witness(batch: list, plugins: list) -> None:
    written = (("spans_exported",), ("slices_written",), ("slices_written",))
    with open(os.environ["CHILD_COUNTER"], "r+b") as handle:
        counter = mmap.mmap(handle.fileno(), 32)
        mb_id = 0
        while True:
            run_batch(batch, mb_id)
            mb_id += 1
            counter[:8] = struct.pack("<q", mb_id)
            if mb_id % 16 == 0:  # what each exporter process last said it wrote: its file must hold it
                counts = [plugin.sched_trace_collect_stats().get(key, 0)
                          for plugin, (key,) in zip(plugins, written)]
                counter[8:8 + 8 * len(counts)] = struct.pack(f"<{len(counts)}q", *counts)
            time.sleep(0.0005)


if __name__ == "__main__":
    main()
