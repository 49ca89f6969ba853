"""The standard ``OTEL_*`` variables, read as the OpenTelemetry Python SDK reads them.

Which exporters (``OTEL_TRACES_EXPORTER``), which sampler (``OTEL_TRACES_SAMPLER``,
``_ARG``), the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and
where and how OTLP goes (``OTEL_EXPORTER_OTLP_[TRACES_]*``: protocol, endpoint,
headers, timeout, compression, certificates, insecure). The per-signal
``..._TRACES_...`` variable wins over the generic one; an empty value counts as
unset, as the specification says.

Header values are secrets (``authorization=Bearer ...``): they live only in
:class:`OtlpTarget`, whose ``repr`` hides them, and no error message quotes them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional
from urllib.parse import unquote, urlsplit

from sched_trace import ConfigError

log = logging.getLogger("sched_trace.otel")

PROTOCOLS = ("http/protobuf", "http/json", "grpc")
#: OTEL_TRACES_EXPORTER names that mean OTLP, and the protocol each one fixes (None: from OTEL_*).
OTLP_NAMES = {"otlp": None, "otlp_proto_http": "http/protobuf", "otlp_proto_grpc": "grpc"}
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_TIMEOUT_S = 10.0


def _get(environ: Mapping[str, str], *names: str) -> tuple[Optional[str], str]:
    """The first set (non-empty) variable of ``names``: ``(value, name)``."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return None, names[-1]


def _otlp(environ: Mapping[str, str], key: str) -> tuple[Optional[str], str]:
    return _get(environ, f"OTEL_EXPORTER_OTLP_TRACES_{key}", f"OTEL_EXPORTER_OTLP_{key}")


# --- which exporters ------------------------------------------------------------------


def traces_exporter_names(environ: Mapping[str, str]) -> Optional[tuple[str, ...]]:
    """``OTEL_TRACES_EXPORTER`` split as the SDK splits it; None when unset, () for ``none``."""
    raw, _ = _get(environ, "OTEL_TRACES_EXPORTER")
    if raw is None:
        return None
    if raw.lower() == "none":
        return ()
    names = tuple(name.strip() for name in raw.split(","))
    if "" in names:
        raise ConfigError(f"{raw!r} has an empty exporter name", source="environment", key="OTEL_TRACES_EXPORTER")
    return names


def otlp_protocol(environ: Mapping[str, str], name: str = "otlp") -> str:
    """The OTLP protocol an exporter name stands for.

    ``otlp`` takes ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``, else ``http/protobuf``
    (the specification's default; the Python SDK's autoconfiguration alone falls
    back to gRPC). ``otlp_proto_http``/``otlp_proto_grpc`` fix it, as in the SDK.
    """
    raw, variable = _otlp(environ, "PROTOCOL")
    if raw is not None and raw not in PROTOCOLS:
        raise ConfigError(f"{raw!r} is not an OTLP protocol; use one of {', '.join(PROTOCOLS)}",
                          source="environment", key=variable)
    fixed = OTLP_NAMES.get(name)
    if fixed is not None:
        if raw is not None and raw != fixed:
            log.warning("sched-trace otel: %s = %r conflicts with exporter %r; using %s", variable, raw, name, fixed)
        return fixed
    return raw or "http/protobuf"


# --- sampler ----------------------------------------------------------------------------


def sampler_ratio(environ: Mapping[str, str]) -> Optional[float]:
    """The ratio ``OTEL_TRACES_SAMPLER`` (and ``_ARG``) asks for, or None when it says nothing we apply.

    Requests with a ``traceparent`` always follow their parent's sampled flag here,
    so ``always_on``/``traceidratio`` act as their ``parentbased_`` forms do.
    """
    name, _ = _get(environ, "OTEL_TRACES_SAMPLER")
    if name is None:
        return None
    name = name.lower()
    if name not in SAMPLERS:
        log.warning("sched-trace otel: OTEL_TRACES_SAMPLER = %r is not one sched-trace applies (%s); "
                    "exporting every batch and request", name, ", ".join(SAMPLERS))
        return None
    if name.endswith("always_on"):
        return 1.0
    if name.endswith("always_off"):
        return 0.0
    raw, variable = _get(environ, "OTEL_TRACES_SAMPLER_ARG")
    if raw is None:
        return 1.0  # the SDK's default ratio
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"{raw!r} is not a sampling ratio (0.0 .. 1.0) for {name}", source="environment",
                          key=variable)
    return ratio


# --- resource ---------------------------------------------------------------------------


def resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,...``, percent-encoded), plus ``OTEL_SERVICE_NAME``."""
    attributes: dict[str, str] = {}
    raw, variable = _get(environ, "OTEL_RESOURCE_ATTRIBUTES")
    for index, entry in enumerate((raw or "").split(",")):
        if not entry.strip():
            continue
        key, equals, value = entry.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"entry {index + 1} is not key=value", source="environment", key=variable)
        attributes[unquote(key.strip())] = unquote(value.strip())
    service, _ = _get(environ, "OTEL_SERVICE_NAME")
    if service is not None:
        attributes["service.name"] = service
    return attributes


# --- where OTLP goes ----------------------------------------------------------------------


@dataclass(frozen=True)
class OtlpTarget:
    """Where and how to send OTLP; built from the standard variables by :func:`otlp_target`."""

    protocol: str                      # http/protobuf | http/json | grpc
    endpoint: str                      # HTTP: the full URL; gRPC: the URL or host:port as given
    timeout: float = DEFAULT_TIMEOUT_S  # seconds per request, as the Python SDK reads it
    compression: str = "none"          # none | gzip | deflate
    certificate: Optional[str] = None  # CA bundle to trust
    client_key: Optional[str] = None
    client_certificate: Optional[str] = None
    insecure: bool = False             # gRPC: plaintext
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        names = ", ".join(f"{name}=<hidden>" for name, _ in self.headers)
        return (f"OtlpTarget(protocol={self.protocol!r}, endpoint={redact_url(self.endpoint)!r}, "
                f"timeout={self.timeout}, compression={self.compression!r}, headers=[{names}])")

    __str__ = __repr__

    def redact(self, text: str) -> str:
        """``text`` with every header value (and URL credentials) replaced: safe to log."""
        for _, value in self.headers:
            if len(value) >= 4:
                text = text.replace(value, "<hidden>")
        return text.replace(self.endpoint, redact_url(self.endpoint))


def redact_url(url: str) -> str:
    """A URL without its ``user:password@`` part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return url.replace(parts.netloc, parts.netloc.rpartition("@")[2])


def _headers(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    raw, variable = _otlp(environ, "HEADERS")
    headers = []
    for index, entry in enumerate((raw or "").split(",")):
        if not entry.strip():
            continue
        name, equals, value = entry.partition("=")
        name = unquote(name).strip().lower()
        if not equals or not name or any(c in name for c in " \t\r\n:"):
            # Never quote the entry: it may be a credential with a typo.
            raise ConfigError(f"entry {index + 1} is not name=value (values are not shown: they may be secrets)",
                              source="environment", key=variable)
        headers.append((name, unquote(value).strip()))
    return tuple(headers)


def _file(environ: Mapping[str, str], key: str) -> Optional[str]:
    path, variable = _otlp(environ, key)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{path!r} is not a readable file", source="environment", key=variable)
    return path


def _endpoint(protocol: str, explicit: Optional[str], environ: Mapping[str, str]) -> tuple[str, str]:
    """``(endpoint, where it came from)``; HTTP appends ``/v1/traces`` to the generic variable only."""
    if explicit:
        return explicit, "plugins.otel.endpoint"
    traces, _ = _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces is not None:
        return traces, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    base, _ = _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return base or DEFAULT_GRPC_ENDPOINT, "OTEL_EXPORTER_OTLP_ENDPOINT"
    return f"{(base or DEFAULT_HTTP_ENDPOINT).rstrip('/')}/v1/traces", "OTEL_EXPORTER_OTLP_ENDPOINT"


def otlp_target(protocol: str, endpoint: Optional[str] = None,
                environ: Optional[Mapping[str, str]] = None) -> OtlpTarget:
    """Resolve and check every OTLP variable now, so a bad one fails at ``configure()``."""
    environ = os.environ if environ is None else environ
    url, where = _endpoint(protocol, endpoint, environ)
    scheme = urlsplit(url).scheme if "://" in url else ""
    if protocol != "grpc" and scheme not in ("http", "https"):
        raise ConfigError(f"{redact_url(url)!r} is not an http:// or https:// URL", source="environment", key=where)
    raw, variable = _otlp(environ, "TIMEOUT")
    try:
        timeout = DEFAULT_TIMEOUT_S if raw is None else float(raw)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"{raw!r} is not a positive number of seconds", source="environment", key=variable)
    compression, variable = _otlp(environ, "COMPRESSION")
    if compression is not None and compression.lower() not in ("none", "gzip", "deflate"):
        raise ConfigError(f"{compression!r} is not a compression; use gzip, deflate or none",
                          source="environment", key=variable)
    insecure_raw, _ = _otlp(environ, "INSECURE")
    insecure = scheme == "http" if insecure_raw is None or scheme else insecure_raw.lower() == "true"
    return OtlpTarget(
        protocol=protocol, endpoint=url, timeout=timeout, compression=(compression or "none").lower(),
        certificate=_file(environ, "CERTIFICATE"), client_key=_file(environ, "CLIENT_KEY"),
        client_certificate=_file(environ, "CLIENT_CERTIFICATE"), insecure=insecure, headers=_headers(environ),
    )
