"""Counts stage ends; writes the count where SCHED_TRACE_HELLO_OUT says at shutdown."""

from __future__ import annotations

import os

import sched_trace

seen: list[str] = []


@sched_trace.hookimpl
def sched_trace_stage_end(event):
    seen.append(event.name)


@sched_trace.hookimpl
def sched_trace_shutdown():
    path = os.environ.get("SCHED_TRACE_HELLO_OUT")
    if path:
        with open(path, "w") as handle:
            handle.write(",".join(seen))
