"""Launch the scheduler processes and talk to them, like ``sglang.launch_server``."""

from __future__ import annotations

import multiprocessing as mp
import queue
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .schedule_batch import Req
from .scheduler import SchedulerStats, ServerArgs, ShutdownReq, run_scheduler_process


class Engine:
    """``pp_size`` scheduler processes joined in a gloo group; requests in, tokens out.

    Processes are started with ``spawn`` (as SGLang does), so each rank is a fresh
    interpreter.
    """

    def __init__(self, server_args: ServerArgs, startup_timeout: float = 120.0) -> None:
        self.server_args = server_args
        context = mp.get_context("spawn")
        self._rendezvous = tempfile.TemporaryDirectory(prefix="serving-pp-")
        init_method = (Path(self._rendezvous.name) / "store").as_uri()
        self.request_queue = context.Queue()
        self.output_queue = context.Queue()
        self.processes = [
            context.Process(
                target=run_scheduler_process,
                args=(server_args, pp_rank, init_method, self.request_queue, self.output_queue),
                name=f"Scheduler-PP{pp_rank}",
                daemon=True,
            )
            for pp_rank in range(server_args.pp_size)
        ]
        for process in self.processes:
            process.start()
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        try:
            message = self.output_queue.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"scheduler processes not ready after {timeout:.0f}s") from None
        if message != "ready":
            self.kill()
            raise RuntimeError(f"unexpected message from rank 0 at startup: {message!r}")

    def submit(self, reqs: list[Req]) -> None:
        self.request_queue.put(list(reqs))

    def outputs(self, count: int, timeout: float = 300.0) -> Iterator[tuple[str, list[int]]]:
        """Yield ``(rid, output_ids)`` for ``count`` finished requests, as they finish."""
        received, waited = 0, 0.0
        while received < count:
            try:
                finished = self.output_queue.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [(p.name, p.exitcode) for p in self.processes if p.exitcode is not None]
                if dead or waited >= timeout:
                    raise RuntimeError(f"{received}/{count} requests done; exited: {dead}") from None
                continue
            waited = 0.0
            for item in finished:
                received += 1
                yield item

    def shutdown(self, timeout: float = 60.0) -> list[SchedulerStats]:
        """Let the schedulers drain and exit; their stats by PP rank. Raise if one failed."""
        self.request_queue.put(ShutdownReq())
        stats: list[SchedulerStats] = []
        while len(stats) < len(self.processes) and any(p.is_alive() for p in self.processes):
            try:
                message = self.output_queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if isinstance(message, SchedulerStats):
                stats.append(message)
        for process in self.processes:
            process.join(timeout)
        failed = [(p.name, p.exitcode) for p in self.processes if p.exitcode != 0]
        self.kill()
        self._rendezvous.cleanup()
        if failed:
            raise RuntimeError(f"scheduler processes failed: {failed}")
        return sorted(stats, key=lambda s: s.pp_rank)

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
