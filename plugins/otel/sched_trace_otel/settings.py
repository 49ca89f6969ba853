"""``[plugins.otel]`` settings and ``SCHED_TRACE_OTEL_*`` variables, validated up front.

Precedence, highest first: ``SCHED_TRACE_OTEL_<KEY>``, ``OtelPlugin(key=...)``,
``[plugins.otel]`` in the configuration file, then the standard ``OTEL_*``
variables (``OTEL_TRACES_EXPORTER``, ``OTEL_TRACES_SAMPLER[_ARG]``,
``OTEL_SERVICE_NAME``), then the defaults. sched-trace's own settings are choices
made for this tool; ``OTEL_*`` are often set for every SDK in a container, so they
fill in what sched-trace was not told. OTLP endpoint, headers, TLS, timeout and
compression come only from ``OTEL_EXPORTER_OTLP_*`` (:mod:`.otel_env`), so a
secret never sits in a configuration file.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from sched_trace import ConfigError
from sched_trace.export import RequestOwner

from . import otel_env

EXPORTERS = ("file", "otlp", "http/protobuf", "http/json", "grpc", "console", "none")
SAMPLING_KEYS = ("batch_ratio", "batch_every", "request_ratio", "request_every")
REQUEST_MODES = ("spans", "links", "off")


@dataclass(frozen=True)
class OtelSettings:
    """What the otel plugin does; every field has a ``[plugins.otel]`` key of the same name."""

    exporter: str = "file"                    # comma list of EXPORTERS or SDK exporter names; see parse()
    directory: str = "sched-trace-out/otel"   # where the OTLP-JSON lines files go
    endpoint: Optional[str] = None            # else OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    service_name: Optional[str] = None        # else OTEL_SERVICE_NAME, else "sched-trace"
    sglang_compat: bool = False               # service "sglang", request roots module="sglang::request"
    process: bool = True                      # build and export spans in a separate process
    capacity: int = 65536                     # events buffered in the scheduler process
    retry_capacity: int = 65536               # spans kept for retry while the receiver is down
    batch_ratio: float = 1.0                  # fraction of batch scopes exported
    batch_every: int = 1                      # or 1 in N batch scopes per thread
    request_ratio: float = 1.0                # fraction of requests traced (by trace id)
    request_every: int = 1                    # or 1 in N requests (by rid hash)
    requests: str = "spans"                   # spans | links | off
    max_requests: int = 4096                  # per event; more are counted as truncated
    restart_limit: int = 10                   # exporter process restarts before giving up
    request_owner: Optional[dict] = None      # rank keys of the rank that writes request roots; see docs/otel.md

    @property
    def resolved_service_name(self) -> str:
        """This setting, else ``OTEL_SERVICE_NAME``, else ``service.name`` of ``OTEL_RESOURCE_ATTRIBUTES``."""
        if self.sglang_compat:
            return "sglang"
        return self.service_name or otel_env.resource_attributes(os.environ).get("service.name") or "sched-trace"

    @property
    def exporters(self) -> tuple[str, ...]:
        """Each destination: ``file``, ``none``, an OTLP protocol, or an SDK exporter name (``console``)."""
        return tuple(resolve_exporters(self.exporter, os.environ, "<settings>", "exporter").split(","))

    @property
    def protocol(self) -> str:
        """The first OTLP protocol among the exporters, else the first exporter."""
        names = self.exporters
        return next((name for name in names if name in otel_env.PROTOCOLS), names[0])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = OtelSettings.__dataclass_fields__
_TYPES = {name: type(getattr(OtelSettings(), name)) for name in _FIELDS}
_TYPES.update(endpoint=str, service_name=str, request_owner=dict)


def _convert_env(key: str, raw: str) -> Any:
    kind = _TYPES[key]
    if kind is dict:  # request_owner: "pp_rank=0,tp_rank=0"
        return RequestOwner.parse(raw, "environment", f"SCHED_TRACE_OTEL_{key.upper()}").rule
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
    if expected is dict:
        RequestOwner.parse(value, source, where)
        return
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{value!r} is a {type(value).__name__}; expected a {expected.__name__}",
                          source=source, key=where)
    if key == "requests" and value not in REQUEST_MODES:
        raise ConfigError(f"{value!r} is not a request mode; use one of {', '.join(REQUEST_MODES)}",
                          source=source, key=where)
    if key in ("batch_ratio", "request_ratio") and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{value!r} is out of range: a ratio is 0.0 .. 1.0", source=source, key=where)
    if key in ("capacity", "retry_capacity", "batch_every", "request_every",
               "max_requests") and value < 1:
        raise ConfigError(f"{value!r} must be a positive integer", source=source, key=where)
    if key == "restart_limit" and value < 0:
        raise ConfigError(f"{value!r} must be 0 or more", source=source, key=where)


def resolve_exporters(value: str, environ: Mapping[str, str], source: str, key: str) -> str:
    """A comma list of exporter names made concrete: ``otlp`` becomes its protocol; unknown names fail."""
    resolved = []
    for name in (part.strip() for part in value.split(",")):
        if name == "otlp" or name in otel_env.OTLP_NAMES:
            name = otel_env.otlp_protocol(environ, name)
        elif name not in EXPORTERS and not _sdk_exporter_installed(name):
            raise ConfigError(f"{value!r}: {name!r} is not an exporter; use {', '.join(EXPORTERS)}, "
                              "otlp_proto_http, otlp_proto_grpc, or the name of an installed "
                              "opentelemetry_traces_exporter entry point", source=source, key=key)
        if name not in resolved:
            resolved.append(name)
    if len(resolved) > 1 and "none" in resolved:
        raise ConfigError(f"{value!r}: 'none' cannot be combined with other exporters", source=source, key=key)
    return ",".join(resolved)


def _sdk_exporter_installed(name: str) -> bool:
    from importlib.metadata import entry_points

    return bool(name) and any(True for _ in entry_points(group="opentelemetry_traces_exporter", name=name))


def _apply_standard_env(values: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Fill what sched-trace's own settings left unset from ``OTEL_TRACES_EXPORTER`` and ``OTEL_TRACES_SAMPLER``."""
    if "exporter" not in values:
        names = otel_env.traces_exporter_names(environ)
        if names is not None:
            if "file" in names:
                raise ConfigError("'file' is sched-trace's own exporter, not an OpenTelemetry one; "
                                  "set SCHED_TRACE_OTEL_EXPORTER=file (or exporter = \"file\") instead",
                                  source="environment", key="OTEL_TRACES_EXPORTER")
            values["exporter"] = ",".join(names) if names else "none"
            values["_exporter_source"] = ("environment", "OTEL_TRACES_EXPORTER")
    if not any(key in values for key in SAMPLING_KEYS):
        ratio = otel_env.sampler_ratio(environ)
        if ratio is not None and ratio < 1.0:
            values["batch_ratio"] = values["request_ratio"] = ratio


def parse(table: Mapping[str, Any], source: str = "<config>",
          environ: Optional[Mapping[str, str]] = None) -> OtelSettings:
    """Validate ``[plugins.otel]``, ``SCHED_TRACE_OTEL_*`` and ``OTEL_*``; a ConfigError names key and value."""
    environ = os.environ if environ is None else environ
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
    if values.get("request_owner") is not None:
        values["request_owner"] = RequestOwner.parse(values["request_owner"], source, "plugins.otel.request_owner").rule
    _apply_standard_env(values, environ)
    where = values.pop("_exporter_source", None) or (
        ("environment", "SCHED_TRACE_OTEL_EXPORTER") if "exporter" in env_values else (source, "plugins.otel.exporter"))
    if "exporter" in values:
        values["exporter"] = resolve_exporters(values["exporter"], environ, *where)
    for key in ("batch_ratio", "request_ratio"):
        if key in values:
            values[key] = float(values[key])
    settings = OtelSettings(**values)
    for name in settings.exporter.split(","):
        if name in otel_env.PROTOCOLS:  # endpoint, headers, TLS files, timeout: checked now, not at first send
            otel_env.otlp_target(name, settings.endpoint, environ)
    otel_env.resource_attributes(environ)
    return settings
