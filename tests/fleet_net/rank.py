"""One pipeline rank of a serving fleet, run as its own process on a simulated host.

Its otel plugin is configured by the standard ``OTEL_*`` variables alone. It is driven by
lines on stdin and answers each with one JSON line on stdout:

- ``run``: step continuously, paced, until ``halt`` (answers ``{"halted": steps}``);
  ``mark`` meanwhile answers ``{"mark": steps, "stats": counters}``: a step numbered above
  it started after the mark was asked for. Progress lines ``{"step": n}`` come every few steps.
- ``steps N``: N steps, then ``{"done": steps}``.
- ``flush SECONDS``: ``sched_trace.flush``, then ``{"stats": <the otel plugin's counters>}``.
- ``stop``: ``sched_trace.shutdown``, then ``{"final": counters, "produced": spans made}``; exits.

``produced`` is this process's own count of what it handed to sched-trace: every step is
one scope, a thread span plus the ``engine_step`` span plus one ``forward`` span per
micro-batch, each carrying ``bid`` = the step number.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any

import sched_trace

MICROBATCHES = 2
SPANS_PER_STEP = 2 + MICROBATCHES
STEP_PAUSE = 0.2       # a paced scheduler: 5 steps a second, within what Phoenix ingests here
PROGRESS_EVERY = 2


@sched_trace.stage("forward", level=2, microbatch="mb_id")
def forward(mb_id: int) -> None:
    sum(range(2000))


@sched_trace.batch("engine_step", level=1, batch_id="step")
def engine_step(step: int) -> None:
    for mb_id in range(MICROBATCHES):
        forward(mb_id)


class Rank:
    def __init__(self) -> None:
        self.steps = 0
        self.commands: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self.commands.put(line.strip())
        self.commands.put("stop")

    def step(self) -> None:
        self.steps += 1
        engine_step(self.steps)
        if self.steps % PROGRESS_EVERY == 0:
            say(step=self.steps)
        time.sleep(STEP_PAUSE)

    def run(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                self.step()
                continue
            if command == "mark":
                say(mark=self.steps, stats=otel_stats())
            elif command == "halt":
                say(halted=self.steps)
                return
            else:
                raise SystemExit(f"rank: {command!r} while running")

    def serve(self) -> None:
        while True:
            command, *args = self.commands.get().split()
            if command == "run":
                self.run()
            elif command == "steps":
                for _ in range(int(args[0])):
                    self.step()
                say(done=self.steps)
            elif command == "flush":
                sched_trace.flush(timeout=float(args[0]))
                say(stats=otel_stats())
            elif command == "stop":
                sched_trace.shutdown(timeout=float(args[0]) if args else 120.0)
                say(final=otel_stats(), produced=self.steps * SPANS_PER_STEP, steps=self.steps)
                return
            else:
                raise SystemExit(f"rank: unknown command {command!r}")


def otel_stats() -> dict[str, Any]:
    (counters,) = sched_trace.stats()["plugins"].values()  # the one plugin: otel
    return dict(counters)


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    from sched_trace_otel import OtelPlugin

    sched_trace.configure(level=9, plugins=[OtelPlugin()], autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=int(os.environ["PP_RANK"]), tp_rank=0, dp_rank=0)
    say(ready=True)
    Rank().serve()


if __name__ == "__main__":
    main()
