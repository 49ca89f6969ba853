"""The ``otel`` plugin: end and request events into the core's processor; spans are built elsewhere.

On the scheduler thread each hook is the processor's ``append`` (a deque append);
a full buffer drops and counts. The core encodes each batch once and hands it to
the exporter process (:class:`~.exporter.OtelExporter`, or the same exporter on
the exporter thread with ``process = false``), which builds the spans and writes
or sends them. Nothing here imports what only the exporter runs.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
from typing import Any, Mapping

from sched_trace import hookimpl
from sched_trace.export import ExporterPlugin, RequestOwner, host_id, run_id, wall_offset_ns

from . import settings as _settings
from .otel_env import resource_attributes

EXPORTER = "sched_trace_otel.exporter:OtelExporter"


class OtelPlugin(ExporterPlugin):
    """OpenTelemetry spans per rank, batch, stage and request (entry point ``otel``)."""

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides          # settings given in code win over the config file
        self.settings = self._absolute(_settings.parse(overrides, "OtelPlugin()"))
        run_id()  # in the environment now, so processes this one starts agree on request traces
        super().__init__(EXPORTER, "otel", **self._processor_settings(self.settings))

    @staticmethod
    def _absolute(settings: _settings.OtelSettings) -> _settings.OtelSettings:
        # The exporter process may outlive a chdir of the scheduler; pin the directory now.
        return dataclasses.replace(settings, directory=os.path.abspath(settings.directory))

    @staticmethod
    def _processor_settings(settings: _settings.OtelSettings) -> dict[str, Any]:
        return {"process": settings.process, "capacity": settings.capacity, "restart_limit": settings.restart_limit,
                "advice": f"raise [plugins.otel] capacity (now {settings.capacity:,})"}

    @hookimpl
    def sched_trace_configure(self, config: Any) -> None:
        chosen = self._absolute(_settings.parse({**config.plugin_settings("otel"), **self._overrides}, config.source))
        self.settings = chosen
        self.reconfigure(EXPORTER, settings=dataclasses.asdict(chosen), **self._processor_settings(chosen))

    def exporter_options(self) -> Mapping[str, Any]:
        """Built anew at each exporter start: a fork child gets its own pid, salt and file."""
        super().exporter_options()
        return {"settings": dataclasses.asdict(self.settings), "meta": process_meta(self.settings, os.getpid())}


def process_meta(settings: _settings.OtelSettings, pid: int) -> dict[str, Any]:
    """What the exporter needs to know about the scheduler process it exports for."""
    host = host_id()
    return {
        "pid": pid,
        "host": host.replace("/", "_"),
        # Span ids continue from the scheduler's counter after a fork: a salt per exporter keeps them unique.
        "salt": random.getrandbits(31) | (1 << 31),
        "run_id": run_id(),
        "request_owner": RequestOwner.parse(settings.request_owner, "[plugins.otel]", "request_owner").rule,
        "resource": {
            # OTEL_RESOURCE_ATTRIBUTES first: what sched-trace knows of this process wins over it.
            **resource_attributes(os.environ),
            "service.name": settings.resolved_service_name,
            "host.name": socket.gethostname(),
            "host.id": host,
            "process.pid": pid,
            "telemetry.sdk.name": "sched-trace",
            "telemetry.sdk.language": "python",
            "sched_trace.run_id": run_id(),
            # Monotonic-to-epoch offset of the scheduler process, for aligning merged files.
            "sched_trace.clock.wall_offset_ns": wall_offset_ns(),
        },
    }
