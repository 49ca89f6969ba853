"""Which files are traces, in which format, and reading many of them without surprises.

An empty file (a process that exported nothing) is empty, never "some other
format": reading many files skips it with a note. Inside a directory, a file that
is readable but no trace (``report.json`` next to the traces) is skipped too; a
file named explicitly must be a trace. A damaged trace is an error wherever it is.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional, Union

from .._errors import SchedTraceWarning
from ._chrome_read import read_chrome
from ._model import EmptyTraceError, NotATraceError, TraceFile, TraceFormatError
from ._otlp import read_otlp_json
from ._perfetto_read import read_perfetto

PathLike = Union[str, "os.PathLike[str]"]
FORMATS = ("perfetto", "chrome", "otlp-json")
PERFETTO_SUFFIXES = (".perfetto-trace", ".pftrace", ".pb", ".perfetto")
TRACE_SUFFIXES = PERFETTO_SUFFIXES + (".json", ".jsonl")
#: What ``sched-trace report`` writes next to the traces; skipped without a note.
PROJECT_OUTPUTS = ("report.json",)
_HEAD = 65536
_BOM = b"\xef\xbb\xbf"
# Bytes JSON text never holds raw; a Perfetto file has them in its first packet.
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r")


def detect_format(path: PathLike) -> str:
    """``"perfetto"``, ``"chrome"`` or ``"otlp-json"``, from the file's first bytes.

    Raises :class:`EmptyTraceError` for a file with nothing in it and
    :class:`NotATraceError` for text that is no trace.
    """
    path = os.fspath(path)
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
        blank = bool(head) and not head.strip() and not _rest_has_content(handle)
    return sniff_format(path, b"" if blank else head)


def sniff_format(path: str, data: bytes) -> str:
    """:func:`detect_format` for bytes already read (the whole file, or its first 64 KiB)."""
    if not data:
        raise EmptyTraceError("empty file (0 bytes): nothing was recorded in it", path=path)
    head = data[:_HEAD]
    text = head.removeprefix(_BOM).lstrip()
    if not _is_text(head) and not (_no_control_bytes(head) and text[:1] in (b"{", b"[")):
        return "perfetto"  # binary: a Perfetto file starts with packet tag 0x0a and a length
    if not text and not data.strip():
        raise EmptyTraceError("the file holds only whitespace: nothing was recorded in it", path=path)
    if text[:1] not in (b"{", b"["):
        raise NotATraceError("text, but not JSON: neither a Chrome trace, OTLP-JSON nor Perfetto", path=path)
    if b'"resourceSpans"' in head or b'"resource_spans"' in head:
        return "otlp-json"
    if b'"traceEvents"' in head or text[:1] == b"[":
        return "chrome"
    raise NotATraceError("JSON, but neither a Chrome trace ('traceEvents') nor OTLP ('resourceSpans')", path=path)


def _is_text(head: bytes) -> bool:
    """No control bytes but whitespace, and UTF-8 (the sample may end inside a character)."""
    sample = head[:4096]
    if not _no_control_bytes(sample):
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"
    return True


def _no_control_bytes(head: bytes) -> bool:
    sample = head[:4096]
    return len(sample.translate(None, _CONTROL)) == len(sample)


def _rest_has_content(handle: BinaryIO) -> bool:
    while True:
        chunk = handle.read(_HEAD)
        if not chunk:
            return False
        if chunk.strip():
            return True


def read_trace(path: PathLike, format: Optional[str] = None) -> TraceFile:
    """Read one trace file (format detected when not given).

    Every problem with the content is a :class:`TraceFormatError` naming the file
    and the spot; a file cut short (a rank killed mid-write) is read up to its last
    complete record, with a :class:`~sched_trace.SchedTraceWarning` saying what was cut.
    """
    path = os.fspath(path)
    return parse_trace(path, Path(path).read_bytes(), format)


def parse_trace(path: str, data: bytes, format: Optional[str] = None) -> TraceFile:
    """:func:`read_trace` for bytes in memory; ``path`` names them in errors."""
    format = format or sniff_format(path, data)
    if format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; use one of {', '.join(FORMATS)}")
    if format == "perfetto":
        return read_perfetto(path, data)
    text = _utf8(path, data)
    if format == "chrome":
        return read_chrome(path, text)
    return read_otlp_json(path, text)


def _utf8(path: str, data: bytes) -> str:
    try:
        return data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 4:
            raise TraceFormatError(f"not UTF-8 text (byte {exc.start}: {exc.reason})", path=path) from None
        # Cut inside the last character: the reader drops the partial record and says so.
        return data[:exc.start].removeprefix(_BOM).decode("utf-8")


def expand_paths(paths: Iterable[PathLike]) -> list[str]:
    """Files as given; directories become the trace files under them, sorted."""
    return [file for file, _named in _candidates(paths)]


def _candidates(paths: Iterable[PathLike]) -> list[tuple[str, bool]]:
    """``(file, named)``: files as given, then the trace-looking files under directories."""
    found: list[tuple[str, bool]] = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found.extend((str(p), False) for p in sorted(Path(path).rglob("*"))
                         if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
        elif os.path.exists(path):
            found.append((path, True))
        else:
            raise FileNotFoundError(f"{path}: no such trace file or directory")
    return found


def read_traces(paths: Iterable[PathLike],
                progress: Optional[Callable[[int, int], None]] = None) -> list[TraceFile]:
    """Every trace in the files and directories; empty files and non-traces in directories skipped.

    Each skipped file gets a :class:`~sched_trace.SchedTraceWarning` (none for the
    project's own ``report.json``). ``progress(done, total)`` follows each file.
    """
    files = _candidates(paths)
    traces: list[TraceFile] = []
    for done, (path, named) in enumerate(files, 1):
        try:
            traces.append(read_trace(path))
        except EmptyTraceError as exc:
            warnings.warn(SchedTraceWarning(f"{exc}; skipped"), stacklevel=2)
        except NotATraceError as exc:
            if named:
                raise
            if os.path.basename(path) not in PROJECT_OUTPUTS:
                warnings.warn(SchedTraceWarning(f"{exc}; skipped"), stacklevel=2)
        if progress is not None:
            progress(done, len(files))
    return traces
