"""Each distribution declares what it imports, and imports what it declares.

Every module of the core and of each plugin is parsed (never imported); each
third-party import is mapped to the distribution that provides it and must be a
dependency or in an extra of that distribution's pyproject.toml; each required
dependency must be imported somewhere in the distribution, or be listed below with
the reason it is needed without an import.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {
    "sched-trace": (REPO, REPO / "sched_trace"),
    "sched-trace-otel": (REPO / "plugins/otel", REPO / "plugins/otel/sched_trace_otel"),
    "sched-trace-perfetto": (REPO / "plugins/perfetto", REPO / "plugins/perfetto/sched_trace_perfetto"),
    "sched-trace-prometheus": (REPO / "plugins/prometheus", REPO / "plugins/prometheus/sched_trace_prometheus"),
    "sched-trace-cuda": (REPO / "plugins/cuda", REPO / "plugins/cuda/sched_trace_cuda"),
}
# Import name -> distribution, where they differ (namespace packages by their subpackage).
PROVIDERS = {"opentelemetry.proto": "opentelemetry-proto", "opentelemetry.sdk": "opentelemetry-sdk",
             "opentelemetry": "opentelemetry-api", "google.protobuf": "protobuf", "grpc": "grpcio",
             "prometheus_client": "prometheus-client", "yaml": "pyyaml"}
# Imported without being declared, on purpose: the traced program's own libraries.
THE_PROGRAMS = {"torch", "vllm", "sglang"}
# Declared without an import in the distribution itself, and why.
NEEDED_WITHOUT_IMPORT = {
    ("sched-trace-perfetto", "perfetto"): "the core's Perfetto writer, which the plugin drives, uses its protos",
    ("sched-trace-perfetto", "protobuf"): "perfetto's protos are protobuf messages",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared(root: Path) -> tuple[set[str], set[str]]:
    """(required dependencies, dependencies of any extra), as distribution names."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project.get("dependencies", [])}
    optional = {_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    return required, optional


def imported(package: Path) -> set[str]:
    """The distributions the package's modules import (standard library and sched_trace excluded)."""
    found = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top.startswith("sched_trace") or top in THE_PROGRAMS:
                    continue
                provider = next((dist for prefix, dist in PROVIDERS.items()
                                 if name == prefix or name.startswith(prefix + ".")), top.replace("_", "-"))
                found.add(provider.lower())
    return found


@pytest.mark.parametrize("distribution", list(DISTRIBUTIONS))
def test_every_import_is_declared_and_every_dependency_imported(distribution: str) -> None:
    root, package = DISTRIBUTIONS[distribution]
    required, optional = declared(root)
    uses = imported(package)
    missing = uses - required - optional
    assert not missing, f"{distribution} imports {sorted(missing)} without declaring them"
    unused = {dist for dist in required - uses if not dist.startswith("sched-trace")
              and (distribution, dist) not in NEEDED_WITHOUT_IMPORT}
    if distribution == "sched-trace":
        unused.discard("tomli")  # imported as tomllib's fallback, on Python 3.10 only
    assert not unused, f"{distribution} declares {sorted(unused)} and imports none of them"
