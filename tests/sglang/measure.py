"""Output volume of the ``sglang`` profile on a real SGLang server, idle and under load.

    python -m tests.sglang.measure [--pp 1] [--levels 1,2,3,4] [--idle 10] [--requests 32]

For each level: start the server traced (otel plugin, OTLP-JSON files, ``sglang_compat``),
let it idle ``--idle`` seconds (``idle_spans_per_s``: the stage and batch events every
traced process recorded in that window), then serve ``--requests`` concurrent requests (32 prompt
tokens, 32 output tokens each), then stop it with SIGINT as a user does. The OTLP-JSON
bytes of each phase are those of the spans that started in it (with their share of the
files' envelope), so the idle and load rates are separate. Prints one JSON line per level. The lost-at-SIGKILL
figure compares the capture (written through, sched_trace.capture) with what reached the files.
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from .converter_model import engine_spans
from .server import GenerateRequest, SGLangServer, build_model


def otel_bytes(server: SGLangServer) -> int:
    return sum(p.stat().st_size for p in server.otel_dir.glob("*.jsonl"))


def span_bytes(server: SGLangServer, window: tuple[int, int]) -> int:
    """OTLP-JSON bytes of the spans that started in ``window`` (unix ns), their share of each
    file's envelope included: the exporters batch spans of all times into one line."""
    total = 0.0
    for path in server.otel_dir.glob("*.jsonl"):
        sizes, inside = 0, 0
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            for resource in json.loads(line)["resourceSpans"]:
                for scope in resource["scopeSpans"]:
                    for span in scope["spans"]:
                        size = len(json.dumps(span, separators=(",", ":")))
                        sizes += size
                        if window[0] <= int(span["startTimeUnixNano"]) < window[1]:
                            inside += size
        total += inside * path.stat().st_size / sizes if sizes else 0
    return int(total)


def measure(workdir: Path, model: Path, level: int, pp: int, idle_s: float, requests: int) -> dict[str, Any]:
    server = SGLangServer(workdir, pp_size=pp, level=level, capture=True, model=model)
    result: dict[str, Any] = {"level": level, "pp": pp}
    try:
        server.start()
        time.sleep(2.0)  # the health check's request is done
        idle_start = time.time_ns()
        time.sleep(idle_s)
        load_start = time.time_ns()
        load = [GenerateRequest(f"m{i}", 32, 32) for i in range(requests)]
        answers = server.generate_many(load)
        load_end = time.time_ns()
        time.sleep(2.0)  # the exporters write what the load handed them
    finally:
        server.stop(signal.SIGINT)
    idle, loaded = span_bytes(server, (idle_start, load_start)), span_bytes(server, (load_start, load_end))
    idle_spans = sum(1 for e in server.trace().events if idle_start <= e.start_ns < load_start)
    load_s = (load_end - load_start) / 1e9
    result.update(idle_mb_per_s=round(idle / idle_s / 1e6, 4), idle_spans_per_s=round(idle_spans / idle_s, 2), load_s=round(load_s, 2),
                  load_mb=round(loaded / 1e6, 3), load_mb_per_s=round(loaded / load_s / 1e6, 4),
                  output_tokens=sum(a["meta_info"]["completion_tokens"] for a in answers.values()),
                  total_mb=round(otel_bytes(server) / 1e6, 3), **lost_at_sigkill(server))
    return result


def lost_at_sigkill(server: SGLangServer) -> dict[str, Any]:
    """Spans the traced processes recorded (the capture, written through) that never reached
    the OTLP-JSON files when SGLang SIGKILLed them, and the time they cover before the kill.
    Both sides count the HTTP server's ``tokenize`` spans too (the originals carry no rid)."""
    recorded = list(server.trace().events)
    in_files = [s for p in server.otel_dir.glob("*.jsonl") for s in engine_spans(p)
                if "rid" not in s["attributes"] and s["attributes"].get("sched_trace.kind") in ("stage", "batch")]
    last_recorded = max((e.end_ns for e in recorded), default=0)
    last_exported = max((int(s["endTimeUnixNano"]) for s in in_files), default=last_recorded)
    return {"spans_recorded": len(recorded), "spans_in_files": len(in_files),
            "spans_lost": len(recorded) - len(in_files),
            "lost_window_ms": round(max(0, last_recorded - last_exported) / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--levels", default="1,2,3,4")
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model")
        for level in map(int, args.levels.split(",")):
            result = measure(Path(tmp) / f"level{level}", model, level, args.pp, args.idle, args.requests)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
