"""What SGLang's scripts/convert_otel_2_perfetto.py reads from OTLP-JSON, as a checker.

The script is not in the ``sglang`` wheel (it lives in the repository's scripts/), so
the tests cannot run it; this module states the structure it walks, written here from
reading it, so a test can assert our files have it:

- lines of OTLP-JSON (``ExportTraceServiceRequest``), resource spans whose
  ``service.name`` is ``sglang`` (read as ``value.stringValue``); each span attribute's
  value is the first field of its value object;
- request roots: spans with attribute ``module = "sglang::request"`` and a ``rid``, whatever
  their parent (a root is never another span's child);
- their children are thread spans carrying ``pid``, ``host_id``, ``thread_label`` and
  optionally ``pp_rank``/``dp_rank``/``tp_rank`` (the track is named from them);
- the thread spans' children are the first-level slices; they and their descendants
  are drawn;
- a first-level slice's link becomes a flow arrow only when the linked span is itself
  drawn (a slice under some request root); links to anything else are dropped;
- the roots are sorted by their first first-level slice's start, so a root without any
  first-level slice stops the script (``IndexError``): :func:`convert` raises too;
- a drawn span's events become instants, each read with its ``attributes`` (required).

Read from sgl-project/sglang ``scripts/convert_otel_2_perfetto.py`` (main, 2026).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ConvertedTrace:
    roots: list[dict] = field(default_factory=list)
    tracks: dict[str, str] = field(default_factory=dict)       # first-level spanId -> track name
    first_level: dict[str, dict] = field(default_factory=dict)  # spanId -> span
    drawn: dict[str, dict] = field(default_factory=dict)        # every slice that becomes a slice
    flows: list[tuple[dict, dict]] = field(default_factory=list)  # (from, to)


def engine_spans(path: Path) -> list[dict]:
    spans = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        for resource_spans in json.loads(line)["resourceSpans"]:
            resource = {a["key"]: next(iter(a["value"].values()), None)
                        for a in resource_spans["resource"]["attributes"]}
            service = next((a["value"].get("stringValue") for a in resource_spans["resource"]["attributes"]
                            if a["key"] == "service.name"), "")
            if service != "sglang":
                continue
            for scope in resource_spans["scopeSpans"]:
                for span in scope["spans"]:
                    span = dict(span)
                    span["attributes"] = {a["key"]: next(iter(a.get("value", {}).values()), None)
                                          for a in span.get("attributes", [])}
                    spans.append(span)
    return spans


def track_name(thread: dict) -> str:
    attrs = thread["attributes"]
    name = f"{attrs['host_id'][:8]}:{attrs['thread_label']}"
    for key, tag in (("pp_rank", "PP"), ("dp_rank", "DP"), ("tp_rank", "TP")):
        if key in attrs:
            name += f"-{tag}{attrs[key]}"
    return name


def convert(path: Path) -> ConvertedTrace:
    spans = engine_spans(path)
    children: dict[str, list[dict]] = {}
    result = ConvertedTrace(roots=[s for s in spans if s["attributes"].get("module") == "sglang::request"])
    for span in spans:
        if span["attributes"].get("module") != "sglang::request":
            children.setdefault(span.get("parentSpanId", ""), []).append(span)

    def draw(span: dict) -> None:
        result.drawn[span["spanId"]] = span
        for event in span.get("events", []):
            event["attributes"]  # noqa: B018 - the script reads every event's attributes
        for child in children.get(span["spanId"], []):
            draw(child)

    for root in result.roots:
        root["attributes"]["rid"]  # noqa: B018 - the script reads it (KeyError without)
        first_level = 0
        for thread in children.get(root["spanId"], []):
            int(thread["attributes"]["pid"])  # the script reads it as the Perfetto pid
            for span in children.get(thread["spanId"], []):
                result.first_level[span["spanId"]] = span
                result.tracks[span["spanId"]] = track_name(thread)
                draw(span)
                first_level += 1
        if not first_level:
            raise IndexError(f"request root {root['spanId']} (rid {root['attributes']['rid']!r}) has no "
                             "first-level slice: SGLang's converter stops on it (roots are sorted by their first)")
    for span in result.first_level.values():
        for link in span.get("links", []):
            target = result.drawn.get(link["spanId"])
            if target is not None:
                result.flows.append((target, span))
    return result


def attr(span: dict, key: str) -> Any:
    return span["attributes"].get(key)
