"""Output volume of the ``sglang`` profile on a real SGLang server, idle and under load.

    python -m tests.sglang.measure [--pp 1] [--levels 1,2,3,4] [--idle 10] [--requests 32]

For each level: start the server traced (otel plugin, OTLP-JSON files, ``sglang_compat``),
let it idle ``--idle`` seconds, then serve ``--requests`` concurrent requests (32 prompt
tokens, 32 output tokens each), then idle again and stop it with SIGINT as a user does.
The OTLP-JSON bytes are read from the files as they grow (size sampled around each phase),
so the idle and load rates are separate. Prints one JSON line per level. The lost-at-SIGKILL
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


def settle(server: SGLangServer, seconds: float = 3.0) -> int:
    """The files' size once the exporters have written what they were handed (it stops growing)."""
    size, deadline = otel_bytes(server), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = otel_bytes(server)
        if now == size:
            return size
        size = now
    return size


def measure(workdir: Path, model: Path, level: int, pp: int, idle_s: float, requests: int) -> dict[str, Any]:
    server = SGLangServer(workdir, pp_size=pp, level=level, capture=True, model=model)
    result: dict[str, Any] = {"level": level, "pp": pp}
    try:
        server.start()
        base = settle(server)
        time.sleep(idle_s)
        idle = otel_bytes(server) - base
        load = [GenerateRequest(f"m{i}", 32, 32) for i in range(requests)]
        start = time.monotonic()
        answers = server.generate_many(load)
        load_s = time.monotonic() - start
        loaded = settle(server) - base - idle
        result.update(idle_mb_per_s=round(idle / idle_s / 1e6, 4), load_s=round(load_s, 2),
                      load_mb=round(loaded / 1e6, 3), load_mb_per_s=round(loaded / load_s / 1e6, 4),
                      output_tokens=sum(a["meta_info"]["completion_tokens"] for a in answers.values()))
    finally:
        server.stop(signal.SIGINT)
    result.update(total_mb=round(otel_bytes(server) / 1e6, 3), **lost_at_sigkill(server))
    return result


def lost_at_sigkill(server: SGLangServer) -> dict[str, Any]:
    """Spans the scheduler processes recorded (the capture, written through) that never reached
    the OTLP-JSON files when SGLang SIGKILLed them, and the time they cover before the kill."""
    recorded = [e for e in server.trace().events if e.rank.pp_rank is not None]
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
