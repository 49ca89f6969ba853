"""A test plugin that writes every sched-trace event of a process to ``$SGLANG_TEST_EVENTS_DIR/<pid>.jsonl``.

Loaded through its entry point (the ``*.dist-info`` beside this file, found when this folder
is on PYTHONPATH), so the scheduler processes SGLang spawns load it as they load the otel
and perfetto plugins. One unbuffered ``os.write`` per event: SGLang's SIGKILL at shutdown
loses nothing, so the tests can hold the exporters' files to it. Test fixture only: it
costs a system call per event on the scheduler thread.
"""

from __future__ import annotations

import json
import os
from typing import Any

import sched_trace


def _rank(rank: Any) -> dict[str, Any]:
    keys = ("thread_label", "tp_rank", "pp_rank", "dp_rank")
    found = {key: getattr(rank, key, None) for key in keys}
    found["pid"] = getattr(rank, "pid", None)
    return {k: v for k, v in found.items() if v is not None}


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


class EventLog:
    def __init__(self) -> None:
        self.fd: "int | None" = None

    def _write(self, record: dict[str, Any]) -> None:
        directory = os.environ.get("SGLANG_TEST_EVENTS_DIR")
        if not directory:
            return
        if self.fd is None:
            os.makedirs(directory, exist_ok=True)
            self.fd = os.open(os.path.join(directory, f"{os.getpid()}.jsonl"),
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    def _span(self, kind: str, event: Any) -> None:
        attrs = {k: _plain(v) for k, v in (event.attrs or {}).items() if k != "requests"}
        self._write({"kind": kind, "name": event.name, "level": event.level, "start_ns": event.start_ns,
                     "end_ns": event.end_ns, "rank": _rank(event.rank), "microbatch": _plain(event.microbatch),
                     "batch_id": _plain(event.batch_id), "batch_size": _plain(event.batch_size), "attrs": attrs})

    @sched_trace.hookimpl
    def sched_trace_batch_end(self, event: Any) -> None:
        self._span("batch", event)

    @sched_trace.hookimpl
    def sched_trace_stage_end(self, event: Any) -> None:
        self._span("stage", event)

    @sched_trace.hookimpl
    def sched_trace_request(self, event: Any) -> None:
        self._write({"kind": "request", "phase": event.phase, "ts_ns": event.ts_ns, "rid": event.request_id,
                     "rank": _rank(event.rank), "prompt_tokens": event.prompt_tokens,
                     "output_tokens": event.output_tokens, "batch_id": _plain(event.batch_id),
                     "attrs": {k: _plain(v) for k, v in (event.attrs or {}).items()}})
