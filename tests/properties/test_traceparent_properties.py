"""The W3C traceparent parser, on arbitrary input: ids, or None; never an exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sched_trace._rank import format_traceparent, parse_traceparent

HEX = "0123456789abcdef"
NEAR = st.builds(
    lambda version, trace, span, flags, sep, tail: sep.join([version, trace, span, flags]) + tail,
    st.text(HEX + "gF", min_size=1, max_size=3), st.text(HEX + "ABC", max_size=34),
    st.text(HEX, min_size=14, max_size=18), st.text(HEX, min_size=1, max_size=3),
    st.sampled_from(["-", "_", "--", " "]), st.sampled_from(["", "-", "-extra", "\n", " "]))


@given(st.one_of(st.text(), NEAR, st.binary(), st.integers(), st.none(), st.lists(st.text(max_size=3))))
def test_any_value_parses_to_valid_ids_or_none(value):
    parsed = parse_traceparent(value)
    if parsed is None:
        return
    trace_id, span_id, flags = parsed
    assert 0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64 and 0 <= flags < 256
    assert parse_traceparent(format_traceparent(trace_id, span_id, bool(flags & 1))) == (trace_id, span_id, flags & 1)


@given(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.booleans())
def test_what_we_format_parses_back(trace_id, span_id, sampled):
    assert parse_traceparent(format_traceparent(trace_id, span_id, sampled)) == (trace_id, span_id, int(sampled))


def test_the_w3c_rules():
    valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(valid) == (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)
    assert parse_traceparent(valid + "-more") is None          # version 00 has exactly four fields
    assert parse_traceparent("cc" + valid[2:] + "-more") is not None  # a later version may add fields
    assert parse_traceparent("ff" + valid[2:]) is None          # version ff is invalid
    assert parse_traceparent(valid.replace("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 32)) is None
    assert parse_traceparent(valid.replace("00f067aa0ba902b7", "0" * 16)) is None
    assert parse_traceparent(valid + " " * 1000) is None        # longer than any header we accept
