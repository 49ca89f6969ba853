"""What a frame's write into an exporter process's pipe costs the writer, by how the reader waits.

    python -m benchmarks.pipe_wake [--gap SECONDS] [--frames N] [--evict]

An exporter thread writes a frame into its exporter process's pipe every 0.5 s, holding
the GIL the engine waits for. A reader that waits in the kernel for it (a blocking read,
a poll: the exporter process before 2026-12-08) has to be woken by that write, and the
writer pays for the wake-up: on this project's VM about as much as the copy on a quiet
host (10-15 us), up to a few hundred microseconds on a busy one. A reader that naps and looks (``FrameReader(nap=...)``, the exporter process
now) is never woken. Each case writes ``--frames`` frames of 33 KB (an exporter frame of
about 760 spans), ``--gap`` seconds apart, the same way the exporter thread does
(``_speedups.write_held``: one non-blocking writev), and reports the median and the
quartiles of the write's wall clock, and the napping reader's median as a share of the
waiting reader's (each reader alone, the two taking turns three times). ``--evict``
writes 8 MiB before each frame (bench_cold's evictor), as an engine's step leaves the caches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PAYLOAD = 33_000
READERS = {
    "waits": "import os\nwhile os.read(0, 1 << 20):\n    pass\n",
    "naps": ("import os, time\nos.set_blocking(0, False)\nwhile True:\n    try:\n        if not os.read(0, 1 << 20):\n"
             "            break\n    except BlockingIOError:\n        time.sleep(0.02)\n"),
}


def _start(source: str) -> subprocess.Popen:
    reader = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE, bufsize=0)
    os.set_blocking(reader.stdin.fileno(), False)
    return reader


def measure(gap: float, frames: int, evict: bool, rounds: int = 3) -> dict[str, list[int]]:
    """Each reader alone (another process reading beside it would keep the CPUs awake), in
    ``rounds`` turns of ``frames // rounds`` frames each."""
    from sched_trace import _native

    from .bench_cold import _evict

    write_held = _native.speedups.write_held if _native.speedups is not None else None
    payload, head = os.urandom(PAYLOAD), b"\x00" * 5
    spent: dict[str, list[int]] = {name: [] for name in READERS}
    for turn in range(rounds):
        for name, source in READERS.items():
            reader = _start(source)
            try:
                for _ in range(frames // rounds + (turn < frames % rounds)):
                    time.sleep(gap)
                    if evict:
                        _evict()
                    fd = reader.stdin.fileno()
                    started = time.perf_counter_ns()
                    written = write_held(fd, head, payload) if write_held else os.writev(fd, [head, payload])
                    spent[name].append(time.perf_counter_ns() - started)
                    assert written == len(head) + PAYLOAD, "the pipe was full: a longer --gap"
            finally:
                reader.stdin.close()
                reader.wait()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between a reader's frames (default 0.3)")
    parser.add_argument("--frames", type=int, default=30, help="frames per reader (default 30)")
    parser.add_argument("--evict", action="store_true", help="write 8 MiB before each frame")
    args = parser.parse_args()
    spent = measure(args.gap, args.frames, args.evict)
    medians = {}
    for name, times in spent.items():
        low, median, high = statistics.quantiles(times, n=4)
        medians[name] = median
        print(f"reader {name}: a frame's write {median / 1e3:.1f} us (quartiles {low / 1e3:.1f}-{high / 1e3:.1f}), "
              f"{len(times)} frames {args.gap:g} s apart{', caches evicted' if args.evict else ''}")
    print(f"napping reader / waiting reader: {medians['naps'] / medians['waits']:.2f}")


if __name__ == "__main__":
    main()
