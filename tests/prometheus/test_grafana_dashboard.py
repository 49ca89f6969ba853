"""docs/grafana/sched-trace.json: valid dashboard JSON whose PromQL names only metrics the plugin exports.

tests/backends/test_prometheus_server.py also runs every expression on a real Prometheus server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from sched_trace_prometheus import PrometheusPlugin

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "sched-trace.json"
METRIC_NAME = re.compile(r"\bsched_trace_[a-z0-9_]+\b")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query target, and the template variables' queries."""
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", ()):
            yield panel["title"], target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), \w+\)", variable["query"]["query"])
            assert inner, variable
            yield f"${variable['name']}", inner.group(1)


def exported_names() -> set[str]:
    """Every sample name the plugin's collector can produce (from its descriptions, not from data)."""
    names = set()
    for family in PrometheusPlugin().collector.describe():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def test_dashboard_is_grafana_json_with_prometheus_targets() -> None:
    board = dashboard()
    assert board["uid"] == "sched-trace" and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert graphs and all(panel["targets"] for panel in graphs)
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["refId"] and target["expr"].strip()
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job", "pp_rank"}


def test_every_expression_names_exported_metrics() -> None:
    exported = exported_names()
    assert "sched_trace_request_time_to_first_token_seconds_bucket" in exported
    used_anywhere = set()
    for panel, expr in dashboard_expressions():
        used = set(METRIC_NAME.findall(expr))
        assert used, f"panel {panel!r} queries no sched-trace metric: {expr}"
        assert used <= exported, f"panel {panel!r} uses {sorted(used - exported)}, which the plugin never exports"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        used_anywhere |= used
    # the headline metrics each have a panel
    for family in ("request_time_to_first_token_seconds", "request_time_per_output_token_seconds",
                   "request_queue_time_seconds", "request_e2e_latency_seconds", "rank_bubble_ratio",
                   "stage_duration_seconds"):
        assert any(name.startswith(f"sched_trace_{family}") for name in used_anywhere), family


def test_request_ids_never_appear_as_labels_in_the_dashboard() -> None:
    text = DASHBOARD.read_text()
    assert not re.findall(r"\b(rid|request_id)\b", text)
