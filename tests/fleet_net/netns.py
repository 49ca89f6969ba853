"""Simulated hosts: one network namespace each (``ip netns``), joined by veth pairs to a bridge.

The bridge lives in the test's own namespace, which plays the gateway host: what listens on
the bridge address is reachable from every simulated host, and nothing else of this machine
is. Each host also gets its own hostname (a UTS namespace per process, via ``unshare``) and
an ``/etc/hosts`` (``ip netns exec`` bind-mounts ``/etc/netns/<name>/hosts``), so the
commands a deployment guide shows (``http://otel-gateway:4317``) run there unchanged.

Addresses come from 198.18.0.0/15, the range set aside for network benchmark tests; every
name carries the creating process's id, so a run can clear what a killed run left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from sched_trace.commands.level import pid_running

PREFIX = "stf"                 # every bridge, veth and namespace name starts with stf<pid>
NETNS_ETC = Path("/etc/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> Optional[str]:
    """Why simulated hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        done = ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "no `ip` command: install Debian's iproute2"
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    name: str          # the hostname its processes see
    netns: str
    address: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run on this host: in its namespace, under its hostname (each step execs the next)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *command]


class Network:
    """A bridge in this namespace (the gateway host) and ``hosts`` attached to it, each in its own namespace."""

    def __init__(self, hosts: Sequence[str], aliases: Sequence[str] = ()) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}br"
        self.hosts: list[Host] = []
        self.aliases = list(aliases)   # names that resolve to the gateway host on every host
        clear_stale()
        subnet = free_subnet()
        self.gateway_address = f"{subnet}.1"
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for index, name in enumerate(hosts):
                self._add_host(name, f"{subnet}.{index + 2}", index)
        except BaseException:
            self.close()
            raise

    def _add_host(self, name: str, address: str, index: int) -> Host:
        host = Host(name, f"{self.tag}-{name}", address)
        veth = f"{self.tag}h{index}"
        ip("netns", "add", host.netns)
        self.hosts.append(host)  # from here on close() removes it, whatever fails next
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("link", "set", veth, "master", self.bridge, "up")
        ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        etc = NETNS_ETC / host.netns
        etc.mkdir(parents=True, exist_ok=True)
        system = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
        lines = [system.rstrip("\n"), f"127.0.0.1 {name}"]
        lines += [f"{self.gateway_address} {alias}" for alias in self.aliases]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        return host

    def close(self) -> list[int]:
        """Delete every namespace, veth and the bridge; returns the pids that were still inside (killed)."""
        leftovers = []
        for host in self.hosts:
            leftovers += kill_inside(host.netns)
            ip("netns", "del", host.netns, check=False)  # takes its end of the veth pair with it
            remove_etc(host.netns)
        self.hosts = []
        ip("link", "del", self.bridge, check=False)
        return leftovers


def kill_inside(netns: str) -> list[int]:
    """SIGKILL what still runs in a namespace of ours (processes our test started there)."""
    pids = [int(p) for p in ip("netns", "pids", netns, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return pids


def remove_etc(netns: str) -> None:
    etc = NETNS_ETC / netns
    for path in etc.glob("*"):
        path.unlink()
    if etc.exists():
        etc.rmdir()
    if NETNS_ETC.exists() and not any(NETNS_ETC.iterdir()):
        NETNS_ETC.rmdir()


def free_subnet() -> str:
    """A 198.18.N.0/24 no interface here uses (runs of this test side by side pick different ones)."""
    used = set(re.findall(r"inet 198\.18\.(\d+)\.", ip("-4", "-o", "addr").stdout))
    start = os.getpid() % 250
    for offset in range(250):
        candidate = (start + offset) % 250 + 1
        if str(candidate) not in used:
            return f"198.18.{candidate}"
    raise RuntimeError("no free 198.18.N.0/24 subnet")


def clear_stale() -> None:
    """Remove what a killed earlier run of this test left (names of ours whose process is gone)."""
    names = re.findall(rf"^({PREFIX}(\d+)\S*)", ip("netns", "list", check=False).stdout, re.M)
    links = re.findall(rf"^\d+: ({PREFIX}(\d+)(?:br|h\d+))[@:]", ip("-o", "link", check=False).stdout, re.M)
    for name, pid in names:
        if not _alive(int(pid)):
            kill_inside(name)
            ip("netns", "del", name, check=False)
            remove_etc(name)
    for name, pid in links:
        if not _alive(int(pid)):
            ip("link", "del", name, check=False)


_alive = pid_running
