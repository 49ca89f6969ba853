"""The fleet's path, with real parts: rank processes on two hosts (network namespaces joined
by veth) send OTLP to an agent collector on their host, the agents to a gateway collector,
the gateway to Arize Phoenix, as docs/deployment.md deploys it; collectors are stopped and
started again while the ranks run.

Three witnesses, each independent of the others:
- each rank process: how many spans it made, and how many its otel plugin counts as
  delivered (``spans_exported``: the next hop, its host's agent, answered success);
- the gateway's debug log: every span id it received, a second copy included (Phoenix
  cannot show one: it keeps one row per span id and drops a re-sent one);
- Phoenix: what the backend holds, per rank (each rank has its own project).
"""

from __future__ import annotations

import signal
from typing import Any, Iterator

import pytest

from tests.backends.phoenix_server import PhoenixServer

from . import netns
from .collectors import binary, received_span_ids, wait_until
from .fleet import Fleet, RankProcess, marks, run_on, run_until, span_count, spans_by_step, wait_until_found
from .rank import SPANS_PER_STEP

STEPS = 10  # steps the ranks make between two events; every wait is on a condition
EXPORT_FAILED = "Exporting failed"  # what rotel-agent logs when its next hop refused or was away


@pytest.fixture(scope="module")
def network() -> Iterator[netns.Network]:
    binary()  # skips when the collector is not installed
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"simulated hosts need network namespaces: {reason}")
    network = netns.Network(["host0", "host1"], aliases=["otel-gateway"])
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="module")
def phoenix(network: netns.Network, tmp_path_factory: Any) -> Iterator[PhoenixServer]:
    server = PhoenixServer(tmp_path_factory.mktemp("phoenix"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fleet(network: netns.Network, phoenix: PhoenixServer, tmp_path: Any) -> Iterator[Fleet]:
    fleet = Fleet(network, phoenix.url, tmp_path)
    try:
        yield fleet.start()
    finally:
        fleet.close()


def phoenix_holds_what_the_gateway_forwarded(phoenix: PhoenixServer, fleet: Fleet, rank: RankProcess,
                                             least: int) -> list[dict[str, Any]]:
    """Phoenix's spans of ``rank`` once it holds ``least`` of them and every span the last gateway
    (stopped by SIGTERM, so it exported all it had) received for it; Phoenix ingests in order."""
    last = {span_id for (project, span_id) in received_span_ids(fleet.gateway.log, fleet.gateway.starts)
            if project == rank.project}
    found: list = []

    def arrived() -> bool:
        nonlocal found
        if span_count(phoenix, rank.project) < max(least, len(last)):
            return False
        found = phoenix.spans(rank.project)
        return last <= {span["span_id"] for span in found}

    wait_until(arrived, f"Phoenix to hold the {len(last)} spans the last gateway got for {rank.project}", 600,
               every=2.0, detail=lambda: f"({len(last - {span['span_id'] for span in found})} of them missing)")
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_collectors_restarted_while_ranks_run(fleet: Fleet, phoenix: PhoenixServer, sig: signal.Signals) -> None:
    """SIGTERM: a collector exports what it holds before it exits, so every span a rank counts
    as delivered is in Phoenix, exactly once. SIGKILL: what the killed collector had acknowledged
    is lost (measured here); nothing made after it came back is."""
    host0, _ = fleet.network.hosts
    ranks = fleet.start_ranks(f"restart-{sig.name.lower()}")
    for rank in ranks:
        rank.send("run")
    run_on(ranks, STEPS)
    for rank in ranks:
        wait_until_found(phoenix, rank.project, 1)  # the whole path carries spans

    # Host 0's agent goes away; its ranks step on, their spans wait in the plugin, retried.
    failures = {rank.pp_rank: rank.ask("mark", "stats")["export_failures"] for rank in fleet.on(host0)}
    fleet.agents[host0.name].stop(sig)
    run_until(fleet.on(host0), lambda rank, stats: stats["export_failures"] > failures[rank.pp_rank],
              "an export to its stopped agent failed")
    run_on(ranks, STEPS)
    fleet.agents[host0.name].start()
    run_on(ranks, STEPS)
    # The gateway goes away; every agent keeps what it gets, retried.
    tried = {name: agent.said(EXPORT_FAILED) for name, agent in fleet.agents.items()}
    fleet.gateway.stop(sig)
    wait_until(lambda: all(agent.said(EXPORT_FAILED) > tried[name] for name, agent in fleet.agents.items()),
               "every agent to fail an export to the stopped gateway", 300)
    run_on(ranks, STEPS)
    fleet.gateway.start()
    restarted = marks(ranks)            # steps above these began after the last restart
    run_on(ranks, STEPS)
    for rank in ranks:
        rank.ask("halt", "halted")
    finals = {rank.pp_rank: rank.ask("stop", "final") for rank in ranks}
    fleet.drain()

    received = received_span_ids(fleet.gateway.log)
    for rank in ranks:
        final, produced, steps = finals[rank.pp_rank], rank.reply("produced"), rank.reply("steps")
        assert final["spans_exported"] == produced, (rank.pp_rank, final)  # every span reached an agent
        at_gateway = {span_id: n for (project, span_id), n in received.items() if project == rank.project}
        spans = phoenix_holds_what_the_gateway_forwarded(phoenix, fleet, rank, 1)
        in_phoenix = [span["span_id"] for span in spans]
        assert len(in_phoenix) == len(set(in_phoenix))
        assert set(in_phoenix) <= set(at_gateway)
        per_step = spans_by_step(spans)
        lost_at_agent, lost_at_gateway = produced - len(at_gateway), len(at_gateway) - len(in_phoenix)
        print(f"{sig.name} pp{rank.pp_rank} on {rank.host.name}: made {produced}, counted delivered "
              f"{final['spans_exported']}, export failures {final['export_failures']}, gateway got "
              f"{len(at_gateway)} ({sum(at_gateway.values()) - len(at_gateway)} twice), Phoenix holds "
              f"{len(in_phoenix)}; lost in the agent {lost_at_agent}, in the gateway {lost_at_gateway}; "
              f"steps missing spans: {sorted(s for s in range(1, steps + 1) if per_step[s] < SPANS_PER_STEP)}")
        # Whatever a collector lost, it lost before it was killed: every later step is whole.
        assert all(per_step[step] == SPANS_PER_STEP for step in range(restarted[rank.pp_rank] + 1, steps + 1))
        if rank.host is host0:
            assert final["export_failures"] > 0, final  # its agent really went away under it
        if sig == signal.SIGTERM:
            assert len(in_phoenix) == produced, final
            assert sum(at_gateway.values()) == len(at_gateway) == produced  # nothing arrived twice


def test_spans_no_collector_took_are_counted_undelivered(fleet: Fleet, phoenix: PhoenixServer) -> None:
    """Host 0's agent stops (SIGTERM: it forwards what it has) and stays away; its ranks step on and
    shut down. What the agent acknowledged is in Phoenix, exactly; the rest is counted as not
    delivered, so made = delivered + counted losses, rank by rank."""
    host0, host1 = fleet.network.hosts
    ranks = fleet.start_ranks("undelivered")
    for rank in ranks:
        rank.ask(f"steps {STEPS}", "done")
        assert rank.ask("flush 120", "stats")["spans_exported"] == STEPS * SPANS_PER_STEP
    fleet.agents[host0.name].stop(signal.SIGTERM)
    for rank in ranks:
        rank.ask(f"steps {STEPS}", "done")
    finals = {rank.pp_rank: rank.ask("stop 5", "final") for rank in ranks}  # gives up on host 0's agent after 5 s
    fleet.drain()

    for rank in ranks:
        final = finals[rank.pp_rank]
        not_delivered = sum(final.get(key, 0) for key in ("spans_dropped", "spans_rejected", "spans_undelivered"))
        assert final["spans_exported"] + not_delivered == 2 * STEPS * SPANS_PER_STEP, final
        delivered_steps = 2 * STEPS if rank.host is host1 else STEPS
        assert final["spans_exported"] == delivered_steps * SPANS_PER_STEP, final
        spans = phoenix_holds_what_the_gateway_forwarded(phoenix, fleet, rank, final["spans_exported"])
        assert spans_by_step(spans) == {step: SPANS_PER_STEP for step in range(1, delivered_steps + 1)}


def test_spans_an_agent_acknowledged_are_lost_with_it(fleet: Fleet, phoenix: PhoenixServer) -> None:
    """'Delivered' is the next hop's acknowledgement. An agent acknowledges what it has taken
    into memory; killed before it forwarded them, it takes them along: exactly those spans are
    missing, though the ranks count them delivered. Host 1's agent, alive, forwards all it held
    once the gateway is back."""
    host0, host1 = fleet.network.hosts
    ranks = fleet.start_ranks("acknowledged")
    fleet.gateway.stop()                       # the agents hold what they get
    for rank in ranks:
        rank.ask(f"steps {STEPS}", "done")
        stats = rank.ask("flush 120", "stats")
        assert stats["spans_exported"] == STEPS * SPANS_PER_STEP, stats  # all acknowledged by the agent
    fleet.agents[host0.name].stop(signal.SIGKILL)
    fleet.gateway.start()
    fleet.agents[host0.name].start()
    for rank in ranks:
        rank.ask(f"steps {STEPS}", "done")
    finals = {rank.pp_rank: rank.ask("stop", "final") for rank in ranks}
    fleet.drain()

    for rank in ranks:
        assert finals[rank.pp_rank]["spans_exported"] == 2 * STEPS * SPANS_PER_STEP, finals[rank.pp_rank]
    for rank in fleet.on(host1):
        spans = wait_until_found(phoenix, rank.project, 2 * STEPS * SPANS_PER_STEP)
        assert spans_by_step(spans) == {step: SPANS_PER_STEP for step in range(1, 2 * STEPS + 1)}
    for rank in fleet.on(host0):
        spans = phoenix_holds_what_the_gateway_forwarded(phoenix, fleet, rank, STEPS * SPANS_PER_STEP)
        assert spans_by_step(spans) == {step: SPANS_PER_STEP for step in range(STEPS + 1, 2 * STEPS + 1)}
