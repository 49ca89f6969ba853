"""One endpoint for every rank on a host: prometheus_client's multiprocess mode.

Every rank process runs the plugin with ``PROMETHEUS_MULTIPROC_DIR`` set (before it
imports ``prometheus_client``) and ``port = 0``; its metric values go to files in
that directory as its exporter thread observes them. One process, a rank or a
side process (``python -m sched_trace_prometheus.multiprocess --port 9464``),
serves the sum of all files, per label set: the rank labels keep ranks apart.
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any, Optional

import prometheus_client
from prometheus_client import CollectorRegistry, multiprocess

import sched_trace


def multiprocess_registry(path: Optional[str] = None) -> CollectorRegistry:
    """A registry that reads every process's files in ``path`` (default ``$PROMETHEUS_MULTIPROC_DIR``)."""
    path = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or not os.path.isdir(path):
        raise sched_trace.ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR = {path!r} is not a directory: set it, to the same empty "
            "directory, in every rank process before it imports prometheus_client",
            source="environment", key="PROMETHEUS_MULTIPROC_DIR")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def serve_multiprocess(port: int = 0, addr: str = "127.0.0.1",
                       path: Optional[str] = None) -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` for every process writing to ``path``; returns (server, thread).

    ``server.server_address[1]`` is the port bound (``port = 0``: any free one).
    """
    return prometheus_client.start_http_server(port, addr=addr, registry=multiprocess_registry(path))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sched_trace_prometheus.multiprocess",
                                     description="Serve the metrics of every rank on this host.")
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--addr", default="127.0.0.1")
    parser.add_argument("--dir", default=None, help="default: $PROMETHEUS_MULTIPROC_DIR")
    args = parser.parse_args(argv)
    server, thread = serve_multiprocess(args.port, args.addr, args.dir)
    print(f"sched-trace metrics of every rank on http://{args.addr}:{server.server_address[1]}/metrics",
          flush=True)
    thread.join()


if __name__ == "__main__":
    main()
