"""Level 1 (request phases and run_batch only) on a real SGLang server with PP=2: every event
still carries its scheduler's rank, although the spans that used to lend it are off."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from .server import NOT_RUNNABLE, GenerateRequest, SGLangServer, runnable

pytestmark = pytest.mark.skipif(not runnable(), reason=NOT_RUNNABLE)

LOAD = [GenerateRequest(f"l{i}", 12, 6) for i in range(3)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    server = SGLangServer(tmp_path_factory.mktemp("sglang-level1"), pp_size=2, level=1, capture=True)
    try:
        server.start()
        answers = server.generate_many(LOAD)
    finally:
        server.stop()
    return {"answers": answers, "trace": server.trace(), "server": server}


def test_level_1_records_request_phases_and_batches_only(served: dict[str, Any]) -> None:
    trace = served["trace"]
    assert {(e.kind, e.name) for e in trace.events} == {("batch", "run_batch"), ("stage", "tokenize")}
    assert {r.phase for r in trace.requests} == {"arrived", "queued", "scheduled", "first_token", "finished"}
    assert len({e.rank.pid for e in trace.named("run_batch")}) == 2  # both PP ranks' scheduler processes


def test_at_level_1_every_request_event_has_its_ranks(served: dict[str, Any]) -> None:
    trace = served["trace"]
    missing = [(r.rank.pid, r.request_id, r.phase) for r in trace.requests
               if r.rank.pp_rank is None or r.rank.tp_rank is None]
    assert not missing
    pp_ranks = defaultdict(set)
    for r in trace.requests:
        pp_ranks[r.rank.pid].add(r.rank.pp_rank)
    assert sorted(map(sorted, pp_ranks.values())) == [[0], [1]]
