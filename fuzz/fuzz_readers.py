"""Fuzz every trace reader behind ``sched-trace report``, ``merge`` and ``convert`` (atheris).

Each input is read as a trace (format detected, or forced to Perfetto, Chrome JSON or
OTLP-JSON by its first byte; forced Perfetto input is also read by the column reader,
streamed in small chunks, as ``report`` reads large files); what reads is then merged and written back out as
Perfetto and Chrome JSON, as ``merge`` does. A finding (libFuzzer stops, saves the
input as ``crash-*`` and exits non-zero): the reader raising anything but
sched-trace's own errors (``SchedTraceError``), merging raising anything, the writers
raising anything but ``ValueError`` (what ``merge`` reports in one line), or any
input taking longer than ``-timeout`` seconds.

    python fuzz/fuzz_readers.py -atheris_runs=5000 -timeout=10         # seeds built in
    python fuzz/fuzz_readers.py corpus/ -max_total_time=600            # longer, keeping a corpus

The seeds are the same small trace in each format (``tests/traceio/samples.py``).
``tests/traceio/test_fuzz.py`` runs this briefly in the test suite.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The column reader's modules work on whole arrays (few branches for coverage to tell apart), and
# atheris' comparison hooks on numpy arrays grow memory by ~100 KB per input: left uninstrumented.
_VECTORIZED = [f"sched_trace.traceio.{name}" for name in ("_pbscan", "_perfetto_scan", "_perfetto_args",
                                                           "_track_events", "_columns")]

with atheris.instrument_imports(include=["sched_trace"], exclude=_VECTORIZED):
    from sched_trace import SchedTraceError, traceio
    from sched_trace.traceio._chrome_read import read_chrome
    from sched_trace.traceio._otlp import read_otlp_json
    from sched_trace.traceio._perfetto_read import read_perfetto
    from sched_trace.traceio._perfetto_scan import PerfettoScan

OUT = Path(tempfile.mkdtemp(prefix="sched-trace-fuzz-"))
atexit.register(shutil.rmtree, OUT, True)


def read(data: bytes) -> traceio.TraceFile:
    """First byte: 0-3 detect the format as ``read_trace`` does; then Perfetto, Chrome, OTLP-JSON."""
    choice, body = (data[0] % 8, data[1:]) if data else (0, data)
    if choice == 4:
        return read_perfetto("fuzz-input", body)
    if choice in (5, 6, 7):
        text = body.decode("utf-8", errors="replace")
        return (read_chrome if choice == 5 else read_otlp_json)("fuzz-input", text)
    return traceio.parse_trace("fuzz-input", body)


def scan_columns(body: bytes) -> None:
    """The column reader on the bytes, 256 at a time (its own decoding, no protobuf fallback)."""
    path = OUT / "in.perfetto-trace"
    path.write_bytes(body)
    for table in PerfettoScan(str(path), traceio.Catalog(), chunk_bytes=256, small_file_bytes=0):
        table.events()


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cut-short notes are expected here
        if data and data[0] % 8 == 4:
            try:
                scan_columns(data[1:])
            except SchedTraceError:
                pass
        try:
            trace = read(data)
        except SchedTraceError:
            return
        merged = traceio.merge_traces([trace])
        try:
            traceio.write_perfetto(merged.events, OUT / "out.perfetto-trace", clock_offsets=merged.clock_offsets)
            traceio.write_chrome(merged.events, OUT / "out.json", clock_offsets=merged.clock_offsets)
        except ValueError:  # a value the writers refuse (``merge`` reports it in one line, exit 2)
            pass


def seed_corpus(directory: Path) -> None:
    """The sample trace in each format, each under every first-byte choice."""
    from tests.traceio.samples import sample_files

    for name, content in sample_files().items():
        for choice in range(8):
            (directory / f"{choice}-{name}").write_bytes(bytes([choice]) + content)


def main(argv: list[str]) -> None:
    corpus = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not corpus:  # no corpus given: a temporary one holding the seeds
        seeds = Path(tempfile.mkdtemp(prefix="sched-trace-fuzz-seeds-"))
        atexit.register(shutil.rmtree, seeds, True)
        seed_corpus(seeds)
        argv = [*argv, str(seeds)]
    else:
        for directory in corpus:
            os.makedirs(directory, exist_ok=True)
            if not os.listdir(directory):
                seed_corpus(Path(directory))
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
