"""A fleet as deployed: rank processes on simulated hosts, an agent collector per host, one gateway.

Each rank process (tests/fleet_net/rank.py) runs on its host, configured only by the
deployment guide's ``OTEL_*`` variables, and talks to the agent on its host's loopback;
the agents forward to the gateway on the gateway host (this namespace), which exports to
Phoenix. Everything here is started by the test and stopped by it, failing or not.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from .collectors import Collector, guide_command, guide_environment, replace_option, wait_until
from .netns import Host, Network

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RANKS_PER_HOST = 2
AGENT = "On every rank host: the agent"
GATEWAY = "On the gateway host: one collector"
RANK_ENV = "On every rank host, for every rank process"


class RankProcess:
    """One rank (tests/fleet_net/rank.py) on its host; commands in on stdin, JSON lines out."""

    def __init__(self, pp_rank: int, host: Host, env: dict[str, str], project: str, cwd: Path) -> None:
        self.pp_rank, self.host, self.project = pp_rank, host, project
        self.lines: list[dict[str, Any]] = []
        self.steps = 0
        self._changed = threading.Condition()
        self._stderr = cwd / f"rank{pp_rank}.stderr"
        with open(self._stderr, "wb") as stderr:
            self.process = subprocess.Popen(host.argv([sys.executable, str(HERE / "rank.py")]), env=env, cwd=cwd,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.reply("ready", timeout=120)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            with self._changed:
                self.lines.append(message)
                for key in ("step", "mark", "done", "halted"):
                    self.steps = max(self.steps, message.get(key, 0))
                self._changed.notify_all()
        self.process.wait()  # end of its output: it exited; waiters see that now
        with self._changed:
            self._changed.notify_all()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def reply(self, key: str, timeout: float = 300.0, after: int = 0) -> Any:
        """The value of the first line from index ``after`` on that carries ``key``."""
        def found() -> Optional[dict]:
            return next((m for m in self.lines[after:] if key in m), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None or self.process.poll() is not None, timeout):
                raise AssertionError(f"rank {self.pp_rank}: no {key!r} within {timeout} s; {self.stderr()}")
            message = found()
        if message is None:
            raise AssertionError(f"rank {self.pp_rank} exited with {self.process.returncode}: {self.stderr()}")
        return message[key]

    def ask(self, command: str, key: str, timeout: float = 300.0) -> Any:
        after = len(self.lines)
        self.send(command)
        return self.reply(key, timeout, after)

    def wait_for_steps(self, steps: int, timeout: float = 300.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.steps >= steps or self.process.poll() is not None, timeout):
                raise AssertionError(f"rank {self.pp_rank}: not at step {steps} within {timeout} s")
        if self.steps < steps:
            raise AssertionError(f"rank {self.pp_rank} exited with {self.process.returncode}: {self.stderr()}")

    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


class Fleet:
    """The collectors of a deployment (agents per host, a gateway), and the ranks started on it."""

    def __init__(self, network: Network, backend_url: str, workdir: Path) -> None:
        self.network, self.workdir = network, workdir
        gateway = guide_command(GATEWAY)
        for flag in ("--otlp-grpc-endpoint", "--otlp-http-endpoint"):  # the gateway host's address, not 0.0.0.0
            port = gateway[gateway.index(flag) + 1].rpartition(":")[2]
            gateway = replace_option(gateway, flag, f"{network.gateway_address}:{port}")
        gateway = replace_option(gateway, "--otlp-exporter-endpoint", backend_url)
        gateway += ["--debug-log", "traces", "--debug-log-verbosity", "detailed"]  # every span it receives
        self.gateway = Collector("gateway", gateway, workdir / "gateway.log")
        self.agents = {host.name: Collector(f"agent on {host.name}", guide_command(AGENT),
                                            workdir / f"agent-{host.name}.log", host)
                       for host in network.hosts}
        self.ranks: list[RankProcess] = []

    def start(self) -> "Fleet":
        self.gateway.start()
        for agent in self.agents.values():
            agent.start()
        return self

    def start_ranks(self, project_prefix: str) -> list[RankProcess]:
        """RANKS_PER_HOST ranks per host; host 0's use the guide's variables as written, host 1's the
        http/protobuf variant the guide names; each rank's spans go to its own Phoenix project."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SCHED_TRACE_"))}
        base["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        base.update(guide_environment(RANK_ENV))
        for index, host in enumerate(self.network.hosts):
            env = dict(base)
            if index % 2:
                env.update(OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                           OTEL_EXPORTER_OTLP_ENDPOINT=env["OTEL_EXPORTER_OTLP_ENDPOINT"].replace(":4317", ":4318"))
            for local in range(RANKS_PER_HOST):
                pp_rank = index * RANKS_PER_HOST + local
                project = f"{project_prefix}-pp{pp_rank}"
                env.update(PP_RANK=str(pp_rank), OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project}")
                self.ranks.append(RankProcess(pp_rank, host, dict(env), project, self.workdir))
        return self.ranks

    def on(self, host: Host) -> list[RankProcess]:
        return [rank for rank in self.ranks if rank.host is host]

    def drain(self) -> None:
        """Stop the agents, then the gateway, with SIGTERM: each exports what it holds before exiting."""
        for agent in self.agents.values():
            if agent.process is not None:
                agent.stop(signal.SIGTERM)
        if self.gateway.process is not None:
            self.gateway.stop(signal.SIGTERM)

    def close(self) -> None:
        for rank in self.ranks:
            rank.close()
        for collector in [*self.agents.values(), self.gateway]:
            collector.close()


def marks(ranks: Iterable[RankProcess]) -> dict[int, int]:
    """Each rank's step count, asked for now: every step numbered above it starts after this call."""
    return {rank.pp_rank: rank.ask("mark", "mark") for rank in ranks}


def run_until(ranks: Iterable[RankProcess], done: Callable[[RankProcess, dict], bool], what: str,
              timeout: float = 300.0) -> None:
    """Let the (running) ranks step until ``done(rank, its otel counters)`` holds for each."""
    for rank in ranks:
        wait_until(lambda rank=rank: done(rank, rank.ask("mark", "stats")), f"rank {rank.pp_rank}: {what}",
                   timeout, every=0.5)


def run_on(ranks: Sequence[RankProcess], steps: int) -> None:
    """Let every rank make ``steps`` more steps (they are running) before going on."""
    targets = marks(ranks)
    for rank in ranks:
        rank.wait_for_steps(targets[rank.pp_rank] + steps)


def spans_by_step(spans: Iterable[dict[str, Any]]) -> "collections.Counter[Optional[int]]":
    """Spans per step (``bid``) of one rank: a step is one trace (thread, engine_step and forward spans)."""
    traces: dict[str, list] = collections.defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    per_step: "collections.Counter[Optional[int]]" = collections.Counter()
    for trace in traces.values():
        bids = {kv["value"]["int_value"] for span in trace for kv in span.get("attributes") or ()
                if kv["key"] == "bid"}
        per_step[bids.pop() if len(bids) == 1 else None] += len(trace)
    return per_step


def span_count(phoenix: Any, project: str) -> int:
    """How many spans Phoenix holds in ``project`` (one COUNT through its GraphQL API: cheap to poll,
    unlike reading every span while Phoenix is still ingesting)."""
    query = "query($name: String!) { getProjectByName(name: $name) { recordCount } }"
    request = urllib.request.Request(f"{phoenix.url}/graphql", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"query": query, "variables": {"name": project}}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        found = json.load(response)["data"]["getProjectByName"]
    return found["recordCount"] if found else 0


def wait_until_found(phoenix: Any, project: str, count: int, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Phoenix's spans in ``project`` once it holds at least ``count`` (it ingests asynchronously)."""
    wait_until(lambda: span_count(phoenix, project) >= count, f"{count} spans in Phoenix project {project}",
               timeout, every=1.0, detail=lambda: f"(it holds {span_count(phoenix, project)})")
    return phoenix.spans(project)
