"""docs/performance.md: every figure with its baseline, ratio and target, the machine, the command."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

HEADER = """# Performance

Numbers measured by the benchmark suite on one machine; regenerate them with

```sh
{command}
```

(`--quick` for a one-minute run, `--only NAME` for one module; those print their
table and write a file only when given `--output FILE`). Every figure is a
ratio or a side-by-side pair measured in the same run: the cases of a figure take
turns inside each repeat, the value is the median over repeats, and the ratio is
the median of the per-repeat ratios, so a noisy neighbour slows both sides alike.
Wall-clock figures come from `time.perf_counter_ns` loops; "scheduler-thread CPU"
figures from `time.thread_time_ns` (the scheduler thread's own CPU time, which
leaves out time spent waiting for the GIL held by an exporter thread).
Targets are what the suite shows, not timed tests.
"""

READING = """## How to read the figures

- **off**: a traced method when no plugin listens, when the stage's level is above
  the configured level, or at level 0. Target: at most 1.2x a plain wrapt
  passthrough wrapper, the floor for any wrapt-based instrumentation.
- **on**: the same method recording a stage with `microbatch`, `batch_size` and
  `requests` extractors, with a list-append plugin and with each exporter plugin
  installed. Target: at most 10x the wrapt passthrough on the scheduler thread,
  and a batch of 1024 requests within 1.3x of a batch of 1 (the event holds a
  reference to the request ids; nothing is copied per request).
- **dispatch**: handing one event to 0, 1 and 4 plugins through sched-trace's cached,
  per-implementation guarded call lists, against pluggy's own `pm.hook.x(event=...)`.
- **threads**: scheduler threads recording at once in one process (total events/s;
  the GIL serialises them, so the total stays flat rather than scaling).
- **memory**: exporters stalled (the export function blocks), events keep coming:
  resident memory growth against the buffer bound, drops counted.
- **ranks**: processes recording and exporting at once on this machine: per-process
  cost per event against one process alone.
"""


FINDINGS = """## What the numbers say

- **Where an enabled call goes** (callgrind, pre-bound, Python 3.11: about 21,300
  instructions against 2,600 for the wrapt passthrough): the three extractors
  (`mb_id`, `len(batch.reqs)`, `batch.rids` into the attrs dict) about a quarter;
  building the end event (a 12-field NamedTuple) and reading the clock twice about
  a seventh; the thread's span stack (one `threading.local` read) and the span id a
  twentieth; the rest is the wrapper call itself and the plugin's own method.
  Nothing depends on the batch size: the event keeps a reference to `batch.rids`,
  so a 1024-request batch costs what a 1-request one does.
- **Time against instructions**: the enabled path allocates objects that outlive
  the call (the event and its attrs dict, about 500 bytes), so its time ratio is
  higher than its instruction ratio. A plugin that keeps every event (the
  list-append plugin) also pays the page faults of a growing heap, about 100 ns
  per call here; a bounded buffer that is drained (what exporter plugins use)
  reuses its memory.
- **`self.method()` against pre-bound**: wrapt builds a bound wrapper object on
  every attribute access (about 300 ns here), so the ratio against the passthrough
  is much lower when the scheduler calls `self.run_batch(...)`, as schedulers do,
  than for a method bound once. The pre-bound rows are the strict test, and the
  one where the 10x target is close.
- **Wall against scheduler-thread CPU**: an exporter that encodes in a thread of the
  scheduler process holds the GIL while it works and shows up as wall time in a
  tight loop (the Perfetto plugin did, at about 20 us per event, until it moved its
  encoding to an exporter process like the otel plugin's: `process = false` brings
  the in-thread writer back). Both now keep wall time close to CPU time.
- **Serving throughput**: on two cores that the ranks already keep busy, any CPU the
  exporters spend comes out of throughput, even in a niced exporter process. Two
  fixes brought the figure from 0.92-0.95x to 0.99x: the otel exporter thread
  remembers each live request's id and trace context instead of reading them for
  every decode batch (28 -> 4.8 us per 24-request event), and the example itself
  stopped polling gloo's `is_completed()` (always false before `wait()`), whose
  growing list had made every engine slow down round after round. Single rounds
  still vary by about +-10%, so a single run of this figure can land either side of
  0.98x; per-request spans cost about 6.5 us each in the otel exporter process.
- **Memory**: an event carrying a `requests` attribute takes about 500 resident
  bytes, so the default capacity of 131,072 events per exporter sits just under
  64 MiB. Events hold references to the extracted values: a scheduler that builds
  a new request-id list per batch keeps those lists alive while their events wait,
  so size `capacity` with that in mind.
- **Threads**: recording takes no lock of its own; the GIL serialises the threads,
  so total events/s stays roughly flat from 1 to 8 threads and CPU per event rises
  only by the cost of GIL hand-offs.

Hot-path changes measured with this suite (callgrind instructions per enabled call,
pre-bound, three extractors, list-append plugin; the disabled path in brackets):
before them 40,011 (3,997; wrapt 3,366). Inlining begin/finish into the sync
wrapper, reading the plugin call lists by index and building the end event from
locals: -33%. `rank.current()` reading one thread-local instead of three: about
2,160 -> 1,030 per call of it. Extractors reading positional parameters in place:
-7%. The span-stack top in a one-item list (one `threading.local` read per span):
-5%. Calling the wrapped function without unpacking an empty kwargs dict: the
disabled path to 1.00x the passthrough. Caching the thread's RankInfo in the
probe's per-thread list, checked against `rank.epoch`: -3.7%. In time, pre-bound
with the list-append plugin, scheduler-thread CPU: about 2,430 -> 1,270 ns per call
(wrapt 129 ns); disabled 140 -> 118 ns. `BackgroundExporter.append` makes one
Python call instead of two (about 600 instructions fewer per event) and the
exporter thread drains its buffer in a C-level loop (64 -> 38 ns per event).
"""


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.3g}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def ratio_text(ratio: Any) -> str:
    return "-" if ratio is None else fmt(ratio) + "x"


def met_text(result: dict[str, Any]) -> str:
    if "target" not in result:
        return ""
    return f"{result['target']}: {'met' if result.get('met') else 'NOT met'}"


def table_lines(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = []
    group = None
    for module, result in results:
        this_group = result.get("group") or module
        if this_group != group:
            group = this_group
            lines += ["", f"### {group}", "", "| figure | value | baseline | ratio | target |",
                      "|---|---|---|---|---|"]
        unit = result.get("unit", "")
        note = f" ({result['note']})" if result.get("note") else ""
        lines.append(
            f"| {result['figure']}{note} | {fmt(result.get('value'), unit)} | "
            f"{fmt(result.get('baseline'), unit)} | {ratio_text(result.get('ratio'))} | {met_text(result)} |"
        )
    return lines


def write_markdown(
    path: Path,
    results: list[tuple[str, dict[str, Any]]],
    problems: list[tuple[str, str]],
    machine: dict[str, Any],
    command: str,
    durations: dict[str, float],
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [HEADER.format(command=command), "## Machine", ""]
    lines.append(f"- date: {now}")
    for key, value in machine.items():
        if key == "packages":
            value = ", ".join(f"{name} {version}" for name, version in value.items())
        lines.append(f"- {key}: {value}")
    lines.append("- module run times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items()))
    lines += ["", "## Results"]
    lines += table_lines(results)
    missed = [(module, r) for module, r in results if "target" in r and not r.get("met")]
    lines += ["", "## Targets not met in this run", ""]
    if missed:
        lines += [f"- {r['figure']}: {ratio_text(r.get('ratio'))} against {r['target']}" for _, r in missed]
    else:
        lines.append("- none")
    if problems:
        lines += ["", "## Modules that did not run", ""]
        for name, problem in problems:
            first, _, rest = problem.partition("\n")
            lines.append(f"- `{name}`: {first}")
            if rest:
                lines += ["", "```text", rest.rstrip(), "```", ""]
    lines += ["", FINDINGS, READING]
    for heading in KEPT_SECTIONS:
        lines += kept_section(path, heading)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


#: Sections written by other tools or by hand that a CPU run of the suite keeps as they are:
#: benchmarks/gpu_check.py's, the engines' analysis (python -m benchmarks.bench_engines), and
#: the exporters' (instruction counts from benchmarks/exporter_instructions.py).
KEPT_SECTIONS = ("## GPU (H200)", "## Engines", "## Exporters")


def kept_section(path: Path, heading: str) -> list[str]:
    """The section under ``heading`` in the file as it is, up to the next ``## `` heading."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return []
    following = text.find("\n## ", start + 1)
    return ["", text[start + 1:following if following >= 0 else len(text)].rstrip()]
