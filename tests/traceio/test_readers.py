"""Reader behaviours named in issues 9 and 13, one by one, against the samples' known events."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest

pytest.importorskip("perfetto")

from sched_trace import SchedTraceWarning, traceio  # noqa: E402

from . import samples  # noqa: E402

TRUTH = Counter(map(samples.slice_key, samples.sample_events()))


def _read(name: str, data: bytes) -> tuple[traceio.TraceFile, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = traceio.parse_trace(name, data)
    return trace, [str(w.message) for w in caught if issubclass(w.category, SchedTraceWarning)]


def test_an_otlp_file_cut_inside_its_last_line_keeps_the_lines_before():
    content = samples.sample_files()["sample.jsonl"]
    first_line = content.index(b"\n") + 1
    trace, (note,) = _read("rank.jsonl", content[:-40])
    assert "rank.jsonl: line 2: cut short" in note
    alone, _ = _read("first.jsonl", content[:first_line])
    assert Counter(map(samples.slice_key, trace.events)) == Counter(map(samples.slice_key, alone.events))
    assert 0 < len(alone.events) < sum(TRUTH.values())


def test_a_chrome_file_cut_inside_an_event_keeps_the_events_before():
    text = samples.sample_files()["sample.json"]
    trace, (note,) = _read("rank.json", text[: text.rindex(b'"ph":"X"') + 12])
    assert "rank.json: cut short (the last" in note and "bytes (an incomplete event) dropped" in note
    got = Counter(map(samples.slice_key, trace.events))
    assert not got - TRUTH and sum((TRUTH - got).values()) == 1


def test_a_bare_array_chrome_file_cut_short_still_reads():
    records = [{"ph": "X", "name": "forward", "ts": 1.5, "dur": 2, "pid": 1, "tid": 2}] * 3
    text = json.dumps(records)
    trace, (note,) = _read("array.json", text[:-20].encode())
    assert [(e.name, e.start_ns, e.end_ns) for e in trace.events] == [("forward", 1500, 3500)] * 2
    assert "array.json: cut short" in note


def test_raw_line_separators_inside_otlp_strings_are_not_line_breaks():
    events = [e._replace(name="fwd\u0085\u2028x") for e in samples.sample_events()]
    text = samples.otlp_json_text(events).replace("\\u0085", "\u0085").replace("\\u2028", "\u2028")
    assert "\u2028" in text
    trace, notes = _read("raw.jsonl", text.encode())
    assert {e.name for e in trace.events} >= {"fwd\u0085\u2028x"} and not notes


def test_an_otlp_span_parent_chain_thousands_deep_reads_in_linear_time():
    """Rank keys are inherited from ancestors; a long chain once cost O(n^2) look-ups."""
    spans = [{"spanId": f"{i + 1:016x}", "parentSpanId": f"{i:016x}" if i else "", "name": "s",
              "startTimeUnixNano": "1", "endTimeUnixNano": "2",
              "attributes": [{"key": "pp_mb_id", "value": {"intValue": "1"}}] if i else
              [{"key": "pp_rank", "value": {"intValue": "3"}}, {"key": "bid", "value": {"intValue": "0"}}]}
             for i in range(5000)]
    document = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    trace, _ = _read("chain.json", document.encode())
    assert len(trace.events) == 5000 and {e.rank.pp_rank for e in trace.events} == {3}


def test_a_perfetto_file_whose_first_packet_is_123_bytes_is_not_taken_for_json(tmp_path):
    """The first bytes are ``0x0a 0x7b`` ("\\n{"): text-looking, but a packet tag and a length."""
    content = samples.sample_files()["sample.perfetto-trace"]
    assert traceio.sniff_format("x", b"\x0a\x7b" + content[2:130]) == "perfetto"
