"""Every trace reader, property-based: what was written reads back; anything else is refused cleanly.

Ground truth is the events a test wrote itself (``samples.py``). On damaged input a
reader may only raise sched-trace's own ``TraceFormatError`` (naming the file), or
read a subset of what was really written and say, with a SchedTraceWarning, that the
file was cut short.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from typing import Any, Optional

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("perfetto")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sched_trace import SchedTraceError, SchedTraceWarning, traceio  # noqa: E402
from sched_trace.analysis import pipeline_report  # noqa: E402
from sched_trace._events import BatchEvent, RankInfo, StageEvent  # noqa: E402
from sched_trace.traceio._perfetto_read import complete_prefix  # noqa: E402

from . import samples  # noqa: E402

FILES = samples.sample_files()
TRUTH = Counter(map(samples.slice_key, samples.sample_events()))
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read(name: str, data: bytes, format: Optional[str] = None) -> tuple[traceio.TraceFile, list[str]]:
    """The trace and the cut-short notes reading it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = traceio.parse_trace(name, data, format)
    return trace, [str(w.message) for w in caught if issubclass(w.category, SchedTraceWarning)]


def test_the_samples_read_back_exactly_in_every_format():
    for name, content in FILES.items():
        trace, notes = read(name, content)
        assert Counter(map(samples.slice_key, trace.events)) == TRUTH and not notes, name
        assert trace.clock_offsets == {(samples.HOST, samples.PID): samples.OFFSET}


@QUICK
@given(st.binary(max_size=4096), st.sampled_from([None, *traceio.FORMATS]))
def test_random_bytes_give_only_the_projects_errors(data, format):
    try:
        read("random.bin", data, format)
    except SchedTraceError as exc:
        assert "random.bin" in str(exc)


@QUICK
@given(st.sampled_from(sorted(FILES)), st.data())
def test_a_file_cut_anywhere_reads_what_was_complete_or_is_refused(name, data):
    content = FILES[name]
    cut = data.draw(st.integers(0, len(content) - 1), label="cut")
    try:
        trace, notes = read(name, content[:cut])
    except traceio.TraceFormatError as exc:
        assert name in str(exc)
        return
    got = Counter(map(samples.slice_key, trace.events))
    assert not got - TRUTH, "read events that were never written"
    if not notes:  # nothing said: the cut fell between records
        at_boundary = {"sample.perfetto-trace": complete_prefix(content[:cut])[0] == cut,
                       "sample.jsonl": content[:cut].endswith(b"\n") or content[cut:cut + 1] == b"\n",
                       "sample.json": got == TRUTH}
        assert at_boundary[name]
    else:
        assert name in notes[0] and "cut short" in notes[0]


def test_a_rank_killed_mid_write_is_read_up_to_its_last_complete_packet():
    # No counters: the file's last packet is the END of the last slice written.
    written = [e._replace(batch_size=None, attrs={}) for e in samples.sample_events()]
    content = samples.perfetto_bytes(written)
    trace, notes = read("rank1.perfetto-trace", content[:-3])
    assert Counter(map(samples.slice_key, trace.events)) == Counter(map(samples.slice_key, written[:-1]))
    (note,) = notes
    end, packets = complete_prefix(content[:-3])
    assert f"rank1.perfetto-trace: cut short: read {packets} complete packets, dropped the last " \
           f"{len(content) - 3 - end} bytes" in note


@QUICK
@given(st.data())
def test_a_flipped_byte_in_a_perfetto_file_gives_events_or_a_project_error(data):
    content = bytearray(FILES["sample.perfetto-trace"])
    position = data.draw(st.integers(0, len(content) - 1), label="position")
    content[position] = data.draw(st.integers(0, 255), label="byte")
    try:
        read("flipped.perfetto-trace", bytes(content))
    except SchedTraceError as exc:
        assert "flipped.perfetto-trace" in str(exc)


# --- wrong types anywhere in the JSON formats ------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, prefix + (key,)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, prefix + (index,)))
    return found


def _replaced(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replaced(node[path[0]], path[1:], value)
    return copy


def _documents(name: str) -> list[Any]:
    text = FILES[name].decode()
    return [json.loads(line) for line in text.splitlines()] if name.endswith(".jsonl") else [json.loads(text)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["sample.json", "sample.jsonl"]), st.data())
def test_a_wrong_value_anywhere_in_a_json_trace_is_read_or_named(tmp_path_factory, name, data):
    documents = _documents(name)
    index = data.draw(st.integers(0, len(documents) - 1), label="document")
    path = data.draw(st.sampled_from(_paths(documents[index])), label="path")
    documents[index] = _replaced(documents[index], path, data.draw(JSON_VALUES, label="value"))
    text = "\n".join(json.dumps(d) for d in documents) + "\n"
    try:
        trace, _ = read(name, text.encode(), "chrome" if name == "sample.json" else "otlp-json")
    except traceio.TraceFormatError as exc:
        assert str(exc).startswith(f"{name}: ")
        return
    # What reads is good enough for merge, both writers and the report (the events are well typed).
    merged = traceio.merge_traces([trace])
    try:
        pipeline_report(merged.events)
    except ValueError:  # AnalysisError (a SchedTraceError) when nothing is left to analyse
        pass
    out = tmp_path_factory.mktemp("written")
    for target in ("merged.perfetto-trace", "merged.json"):
        try:
            traceio.write_trace(merged.events, out / target, clock_offsets=merged.clock_offsets)
        except ValueError as exc:  # a range the writer refuses; merge reports it in one line
            assert "out of range" in str(exc)


# --- what was written reads back, whatever the values --------------------------------

NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | NAMES


@st.composite
def events(draw: Any) -> list[Any]:
    ranks = draw(st.lists(st.builds(RankInfo, NAMES, st.integers(0, 1 << 31), st.integers(0, 1 << 31), NAMES,
                                    st.none() | st.integers(0, 64), st.none() | st.integers(0, 64),
                                    st.none() | st.integers(0, 64)), min_size=1, max_size=3))
    found = []
    for number in range(draw(st.integers(1, 12))):
        start = draw(st.integers(0, 1 << 62))
        cls = draw(st.sampled_from([StageEvent, BatchEvent]))
        attrs = draw(st.dictionaries(NAMES, SCALARS.filter(lambda v: v is not None), max_size=3))
        found.append(cls(draw(NAMES), draw(st.integers(0, 9)), start, start + draw(st.integers(0, 1 << 40)),
                         draw(st.sampled_from(ranks)), draw(st.none() | st.integers(0, 1000) | NAMES),
                         draw(st.none() | INT64), draw(st.none() | st.integers(0, 1 << 31)), attrs, None,
                         number + 1, 0))
    return found


def _full_key(event: Any) -> tuple:
    return samples.slice_key(event) + (event.name, event.rank.tid, event.rank.thread_label,
                                       event.rank.tp_rank, event.rank.dp_rank,
                                       json.dumps(sorted(event.attrs.items(), key=lambda kv: kv[0])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.sampled_from(["perfetto", "chrome"]))
def test_any_events_written_read_back_the_same(tmp_path_factory, written, format):
    path = tmp_path_factory.mktemp("roundtrip") / ("t.json" if format == "chrome" else "t.perfetto-trace")
    traceio.write_trace(written, path, format)
    trace, notes = read(path.name, path.read_bytes())
    assert trace.format == format and not notes
    assert Counter(map(_full_key, trace.events)) == Counter(map(_full_key, written))


def test_a_counter_past_int64_is_refused_by_the_perfetto_writer_as_out_of_range(tmp_path):
    """The example the property above found in CI: the counter's error says what merge's line does."""
    documents = _documents("sample.json")
    documents[0] = _replaced(documents[0], ("traceEvents", 18, "args", "attrs", "queue_depth"), 1 << 63)
    trace, _ = read("sample.json", (json.dumps(documents[0]) + "\n").encode(), "chrome")
    merged = traceio.merge_traces([trace])
    with pytest.raises(ValueError, match="out of range"):
        traceio.write_trace(merged.events, tmp_path / "merged.perfetto-trace", clock_offsets=merged.clock_offsets)
