"""Test harness: record every sched-trace event of a process into a JSON lines file.

``sched-trace run`` puts its bootstrap first on ``PYTHONPATH``; it configures
sched-trace and then imports the next ``sitecustomize``, this one. It registers an
in-memory recorder and, when sched-trace shuts down (at exit), writes
``$SERVING_TEST_EVENTS/events-<pid>.jsonl``: one line per finished stage or batch,
then one ``stats`` line. The example program itself stays untouched.
"""

from __future__ import annotations

import json
import os


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [getattr(item, "rid", item) for item in value]  # request objects -> ids
    return repr(value)


def _row(event) -> dict:
    rank = event.rank
    return {
        "name": event.name, "kind": event.kind, "level": event.level,
        "start_ns": event.start_ns, "end_ns": event.end_ns,
        "pid": rank.pid, "thread_label": rank.thread_label,
        "pp_rank": rank.pp_rank, "tp_rank": rank.tp_rank, "dp_rank": rank.dp_rank,
        "microbatch": event.microbatch, "batch_id": event.batch_id, "batch_size": event.batch_size,
        "span_id": event.span_id, "parent_id": event.parent_id,
        "attrs": {key: _plain(value) for key, value in event.attrs.items()},
        "error": None if event.error is None else repr(event.error),
    }


class _DumpAtShutdown:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.events: list = []

    def sched_trace_batch_end(self, event) -> None:
        self.events.append(event)

    def sched_trace_stage_end(self, event) -> None:
        self.events.append(event)

    def sched_trace_shutdown(self) -> None:
        import sched_trace

        path = os.path.join(self.directory, f"events-{os.getpid()}.jsonl")
        with open(path, "w") as handle:
            for event in self.events:
                handle.write(json.dumps(_row(event)) + "\n")
            stats = sched_trace.stats()
            handle.write(json.dumps({"stats": {
                "level": stats["level"],
                "plugin_errors": stats["plugin_errors"],
                "extract_missing": stats["extract_missing"],
                "unresolved_targets": stats["unresolved_targets"],
                "plugins": sorted(stats["plugins"]),
            }}) + "\n")


if os.environ.get("SERVING_TEST_EVENTS") and os.environ.get("SCHED_TRACE_BOOTSTRAP") == "1":
    import sched_trace

    sched_trace.register(_DumpAtShutdown(os.environ["SERVING_TEST_EVENTS"]), name="serving-test-dump")
