"""``[plugins.otel]`` settings and ``SCHED_TRACE_OTEL_*`` variables, validated up front.

OTLP endpoint, headers, TLS, timeout and protocol stay with the standard
``OTEL_EXPORTER_OTLP_*`` variables, read by the standard exporters themselves;
``OTEL_SERVICE_NAME`` names the service. Only sched-trace's own choices live here.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from sched_trace import ConfigError

EXPORTERS = ("file", "otlp", "http/protobuf", "grpc", "none")
REQUEST_MODES = ("spans", "links", "off")


@dataclass(frozen=True)
class OtelSettings:
    """What the otel plugin does; every field has a ``[plugins.otel]`` key of the same name."""

    exporter: str = "file"                    # file | otlp (protocol from OTEL_*) | http/protobuf | grpc | none
    directory: str = "sched-trace-out/otel"   # where the OTLP-JSON lines files go
    endpoint: Optional[str] = None            # else OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    service_name: Optional[str] = None        # else OTEL_SERVICE_NAME, else "sched-trace"
    sglang_compat: bool = False               # service "sglang", request roots module="sglang::request"
    process: bool = True                      # build and export spans in a separate process
    capacity: int = 65536                     # events buffered in the scheduler process
    queue_capacity: int = 65536               # events queued in the exporter process
    retry_capacity: int = 65536               # spans kept for retry while the receiver is down
    batch_ratio: float = 1.0                  # fraction of batch scopes exported
    batch_every: int = 1                      # or 1 in N batch scopes per thread
    request_ratio: float = 1.0                # fraction of requests traced (by trace id)
    request_every: int = 1                    # or 1 in N requests (by rid hash)
    requests: str = "spans"                   # spans | links | off
    max_requests: int = 4096                  # per event; more are counted as truncated
    restart_limit: int = 10                   # exporter process restarts before giving up

    @property
    def resolved_service_name(self) -> str:
        if self.sglang_compat:
            return "sglang"
        return self.service_name or os.environ.get("OTEL_SERVICE_NAME") or "sched-trace"

    @property
    def protocol(self) -> str:
        """``file``, ``none``, ``http/protobuf`` or ``grpc`` (``otlp`` resolved from OTEL_*)."""
        if self.exporter != "otlp":
            return self.exporter
        raw = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
               or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        return "grpc" if raw.strip() == "grpc" else "http/protobuf"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = OtelSettings.__dataclass_fields__
_TYPES = {name: type(getattr(OtelSettings(), name)) for name in _FIELDS}
_TYPES.update(endpoint=str, service_name=str)


def _convert_env(key: str, raw: str) -> Any:
    kind = _TYPES[key]
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{raw!r} is not a boolean (use 1/0, true/false)", source="environment",
                          key=f"SCHED_TRACE_OTEL_{key.upper()}")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{raw!r} is not a {kind.__name__}", source="environment",
                          key=f"SCHED_TRACE_OTEL_{key.upper()}") from None


def from_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """``SCHED_TRACE_OTEL_<KEY>`` variables (they override the config file)."""
    environ = os.environ if environ is None else environ
    found = {}
    for key in _FIELDS:
        raw = environ.get(f"SCHED_TRACE_OTEL_{key.upper()}")
        if raw not in (None, ""):
            found[key] = _convert_env(key, raw)
    return found


def _check(key: str, value: Any, source: str) -> None:
    where = f"plugins.otel.{key}"
    expected = _TYPES[key]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{value!r} is a {type(value).__name__}; expected a {expected.__name__}",
                          source=source, key=where)
    if key == "exporter" and value not in EXPORTERS:
        raise ConfigError(f"{value!r} is not an exporter; use one of {', '.join(EXPORTERS)}", source=source, key=where)
    if key == "requests" and value not in REQUEST_MODES:
        raise ConfigError(f"{value!r} is not a request mode; use one of {', '.join(REQUEST_MODES)}",
                          source=source, key=where)
    if key in ("batch_ratio", "request_ratio") and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{value!r} is out of range: a ratio is 0.0 .. 1.0", source=source, key=where)
    if key in ("capacity", "queue_capacity", "retry_capacity", "batch_every", "request_every",
               "max_requests") and value < 1:
        raise ConfigError(f"{value!r} must be a positive integer", source=source, key=where)
    if key == "restart_limit" and value < 0:
        raise ConfigError(f"{value!r} must be 0 or more", source=source, key=where)


def parse(table: Mapping[str, Any], source: str = "<config>",
          environ: Optional[Mapping[str, str]] = None) -> OtelSettings:
    """Validate ``[plugins.otel]`` plus ``SCHED_TRACE_OTEL_*``; raise ConfigError naming key and value."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "file":  # the core's documented spelling: ``file = "traces/"`` is the directory
            key = "directory"
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown key {key!r} = {value!r}: {hint}valid keys are {', '.join(sorted(_FIELDS))}",
                              source=source, key=f"plugins.otel.{key}")
        values[key] = value
    env_values = from_env(environ)
    for key, value in {**values, **env_values}.items():
        _check(key, value, "environment" if key in env_values else source)
    values.update(env_values)
    for key in ("batch_ratio", "request_ratio"):
        if key in values:
            values[key] = float(values[key])
    return OtelSettings(**values)
