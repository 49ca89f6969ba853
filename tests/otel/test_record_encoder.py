"""The exporter thread's request reading: remembered per request, never stale on a late traceparent."""

from __future__ import annotations

from sched_trace_otel.wire import RecordEncoder


class Req:
    def __init__(self, rid, traceparent=None):
        self.rid, self.traceparent = rid, traceparent


TP = "00-0000000000000000000000000000abcd-00000000000000ef-01"


def test_a_request_seen_again_gives_the_same_context():
    encoder = RecordEncoder()
    req = Req("r1", TP)
    assert encoder._requests([req]) == (("r1", TP),)
    req.rid = "changed"  # remembered for the object's lifetime: its identity does not change
    assert encoder._requests([req]) == (("r1", TP),)


def test_a_traceparent_attached_later_is_seen():
    encoder = RecordEncoder()
    req = Req("r2")
    assert encoder._requests([req]) == (("r2", None),)
    req.traceparent = TP
    assert encoder._requests([req]) == (("r2", TP),)


def test_a_new_object_at_a_reused_address_is_read_afresh():
    encoder = RecordEncoder()
    for index in range(200):  # freed objects' ids are reused quickly
        req = Req(f"r{index}", TP)
        assert encoder._requests([req]) == ((f"r{index}", TP),)
        del req
