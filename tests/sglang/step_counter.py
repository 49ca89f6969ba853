"""``python step_counter.py ARGS``: ``python -m sglang.launch_server ARGS`` with a counter
around SGLang's own ``Scheduler.run_batch``, the ground truth the tests hold sched-trace to.

SGLang starts its scheduler processes with multiprocessing's spawn, which runs this
file's top level again in each of them (as ``__mp_main__``), so every scheduler process
counts. Each call appends its forward mode to ``$SGLANG_TEST_STEPS_DIR/<pid>.txt`` with
one unbuffered write, so SGLang's SIGKILL at shutdown loses no count.
"""

from __future__ import annotations

import functools
import os

from sglang.srt.managers.scheduler import Scheduler

_steps_dir = os.environ["SGLANG_TEST_STEPS_DIR"]
_counted = Scheduler.run_batch


@functools.wraps(_counted)
def run_batch(self, batch, *args, **kwargs):
    fd = getattr(run_batch, "fd", None)
    if fd is None:
        os.makedirs(_steps_dir, exist_ok=True)
        fd = run_batch.fd = os.open(os.path.join(_steps_dir, f"{os.getpid()}.txt"),
                                    os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{batch.forward_mode.name}\n".encode())
    return _counted(self, batch, *args, **kwargs)


Scheduler.run_batch = run_batch

if __name__ == "__main__":  # what `python -m sglang.launch_server` does, with this file as __main__
    import sys

    from sglang_launch import main

    main(sys.argv[1:])
