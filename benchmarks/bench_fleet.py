"""A fleet's traces: ``sched-trace report`` and ``merge`` on 1M and 10M slices.

The trace is made through sched-trace itself: ``RANKS`` spawned processes, each a
pipeline rank running 1F1B steps whose stages (P2P post and wait, forward,
backward) are traced by ``@sched_trace.stage`` and exported by the Perfetto plugin
to one file per rank. The ranks flush every few hundred calls, so the bounded
buffer never fills; ``sched_trace.stats()`` must show every slice written and none
dropped, or the benchmark stops. Generated traces live under the temporary
directory (``SCHED_TRACE_FLEET_DIR`` moves them), are reused by later runs, and
are removed with ``python -m benchmarks.bench_fleet --clean``; never written into the checkout.

Each command runs in its own process, as a user runs it (``report`` with its PNG,
``merge`` to Perfetto); the figures are its wall time and the peak resident memory
of its whole process tree (the command and its decoding workers, sampled every
20 ms), and how both grow from 1M to 10M slices (linear time: a ratio near 10;
flat memory: near 1).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from .harness import row

RANKS = 8
MICROBATCHES = 8
SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (100_000, 1_000_000)
#: 1F1B on each rank: per micro-batch a forward and a backward, each with a P2P post and wait.
SLICES_PER_STEP = 6 * MICROBATCHES + 1
FLUSH_EVERY = 2048
ROOT = Path(os.environ.get("SCHED_TRACE_FLEET_DIR", Path(tempfile.gettempdir()) / "sched-trace-fleet-bench"))


def one_f_one_b(rank: int) -> list[tuple[str, int]]:
    warmup = min(MICROBATCHES, RANKS - rank)
    order = [("F", i) for i in range(warmup)]
    forward = warmup
    for backward in range(MICROBATCHES):
        order.append(("B", backward))
        if forward < MICROBATCHES:
            order.append(("F", forward))
            forward += 1
    return order


def rank_main(rank: int, steps: int, directory: str, results: Any) -> None:
    """One rank: ``steps`` traced 1F1B steps into this process's Perfetto file."""
    import sched_trace

    @sched_trace.stage("pp_p2p_post", level=3, attrs={"desc": "desc"})
    def post(desc: str) -> None:
        pass

    @sched_trace.stage("pp_p2p_wait", level=3)
    def wait() -> None:
        pass

    @sched_trace.stage("pp_forward", level=2, microbatch="chunk", rank={"stage_index": "stage"})
    def forward(chunk: int, stage: int) -> None:
        pass

    @sched_trace.stage("pp_backward", level=2, microbatch="chunk", rank={"stage_index": "stage"})
    def backward(chunk: int, stage: int) -> None:
        pass

    @sched_trace.batch("pp_step", attrs={"schedule": "schedule", "n_microbatches": "m"})
    def step(schedule: str, m: int, order: list) -> None:
        for kind, chunk in order:
            post("fwd_recv" if kind == "F" else "bwd_recv")
            wait()
            (forward if kind == "F" else backward)(chunk, rank)

    sched_trace.configure(level=3, autoload=False, plugins=[_perfetto(directory)])
    sched_trace.set_thread_info("Scheduler", pp_rank=rank, dp_rank=0, tp_rank=0)
    order = one_f_one_b(rank)
    calls = 0
    for _ in range(steps):
        step("Schedule1F1B", MICROBATCHES, order)
        calls += SLICES_PER_STEP
        if calls >= FLUSH_EVERY:
            sched_trace.flush(60)  # paced: the exporter keeps up, nothing is dropped
            calls = 0
    sched_trace.flush(120)
    (stats,) = sched_trace.stats()["plugins"].values()  # the one plugin configured
    sched_trace.shutdown(120)
    results.put((rank, stats))


def _perfetto(directory: str) -> Any:
    from sched_trace_perfetto.plugin import PerfettoPlugin

    return PerfettoPlugin(directory=directory)


def generate(slices: int, root: Optional[Path] = None) -> Path:
    """Per-rank Perfetto files holding ``slices`` slices in all (reused when already there)."""
    root = ROOT if root is None else root
    steps = max(1, slices // (RANKS * SLICES_PER_STEP))
    directory = root / f"{RANKS}x{steps}"
    marker = directory / "generated.txt"  # not *.json: report and merge read every trace file there
    if marker.exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=rank_main, args=(rank, steps, str(directory), results)) for rank in range(RANKS)]
    started = time.monotonic()
    for process in ranks:
        process.start()
    stats = dict(results.get(timeout=7200) for _ in ranks)
    for process in ranks:
        process.join(600)
    expected = steps * SLICES_PER_STEP
    for rank, counters in sorted(stats.items()):
        dropped = {k: v for k, v in counters.items() if ("drop" in k or "abandon" in k or "lost" in k) and v}
        if counters.get("slices_written") != expected or dropped:
            raise RuntimeError(f"rank {rank}: {counters.get('slices_written')} of {expected} slices written, "
                               f"{dropped or 'nothing'} dropped: the trace is incomplete")
    size = sum(p.stat().st_size for p in directory.glob("*.perfetto-trace"))
    marker.write_text(json.dumps({"ranks": RANKS, "steps": steps, "slices": expected * RANKS, "bytes": size,
                                  "seconds": round(time.monotonic() - started, 1)}))
    return directory


# --- timing the commands -------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) * 1024
            with open(f"/proc/{current}/task/{current}/children") as handle:
                stack.extend(int(child) for child in handle.read().split())
        except (OSError, StopIteration, ValueError):
            continue
    return total


def timed(command: list[str]) -> dict[str, Any]:
    """Wall time, CPU time (the command and its workers), peak resident memory of the whole
    process tree (sampled every 20 ms), the load average around it, and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - started
        stderr = process.stderr.read() if process.stderr else ""
        out.seek(0)
        stdout = out.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rss_mib": peak / 2**20, "stdout": stdout,
            "load": (load + os.getloadavg()[0]) / 2}


def measure(slices: int) -> dict[str, dict[str, Any]]:
    directory = generate(slices)
    info = json.loads((directory / "generated.txt").read_text())
    out = Path(tempfile.mkdtemp(prefix="sched-trace-fleet-out-"))
    try:
        report = timed([sys.executable, "-m", "sched_trace.cli", "report", str(directory), "--out", str(out)])
        merge = timed([sys.executable, "-m", "sched_trace.cli", "merge", str(directory), "-o",
                       str(out / "merged.perfetto-trace")])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"info": info, "report": report, "merge": merge}


def run(quick: bool) -> list[dict[str, Any]]:
    sizes = QUICK_SIZES if quick else SIZES
    found = {size: measure(size) for size in sizes}
    small, large = sizes
    rows = []
    for command in ("report", "merge"):
        for size in sizes:
            figures, info = found[size][command], found[size]["info"]
            shape = f"{info['slices']:,} slices, {info['ranks']} ranks, {info['bytes'] / 2**30:.2f} GiB of Perfetto"
            under = size >= 10_000_000
            rows.append(row(f"sched-trace {command}, {size:,} slices: wall time", figures["wall_s"], None, None, "s",
                            target="<= 60 s" if under else None, met=figures["wall_s"] <= 60 if under else None,
                            note=shape, group="fleet: report and merge"))
            rows.append(row(f"sched-trace {command}, {size:,} slices: CPU time (command and workers)",
                            figures["cpu_s"], None, None, "s", note=f"load average {figures['load']:.1f} on "
                            f"{os.cpu_count()} cores", group="fleet: report and merge"))
            rows.append(row(f"sched-trace {command}, {size:,} slices: peak resident memory (process tree)",
                            figures["rss_mib"], None,
                            None, "MiB", target="<= 1024 MiB" if under else None,
                            met=figures["rss_mib"] <= 1024 if under else None, note=shape,
                            group="fleet: report and merge"))
        # CPU time, not wall: on a shared machine the wall time measures the neighbours too.
        time_growth = found[large][command]["cpu_s"] / found[small][command]["cpu_s"]
        memory_growth = found[large][command]["rss_mib"] / found[small][command]["rss_mib"]
        scale = large / small
        rows.append(row(f"sched-trace {command}: CPU time growth {small:,} -> {large:,} slices", time_growth, scale,
                        time_growth / scale, "x", target="linear (<= 1.2x of the size ratio)",
                        met=time_growth <= 1.2 * scale, group="fleet: report and merge"))
        rows.append(row(f"sched-trace {command}: memory growth {small:,} -> {large:,} slices", memory_growth, 1.0,
                        memory_growth, "x", target="flat (<= 1.5x)", met=memory_growth <= 1.5,
                        group="fleet: report and merge"))
    printed = found[large]["report"]["stdout"]
    rows.append(row("sched-trace report: characters printed", float(len(printed)), None, None, "chars",
                    target="< 5,000", met=len(printed) < 5000, note=f"{large:,} slices",
                    group="fleet: report and merge"))
    return rows


def clean() -> None:
    """Remove the generated traces."""
    shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--clean"]:
        clean()
    else:
        print(generate(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
