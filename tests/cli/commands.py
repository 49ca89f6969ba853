"""Running printed shell commands as a user would: in a directory of their own, with the
virtual environment's ``bin`` first on PATH (``python`` and ``sched-trace`` are its own)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)


def user_environment(**extra: str) -> dict[str, str]:
    """The environment of a shell with the venv activated; the repository is not on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_TRACE_") and k != "PYTHONPATH"}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def run_shell(command: str, cwd: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    """``command`` through ``bash -c``, exactly as written."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=user_environment(**extra),
                          capture_output=True, text=True, timeout=timeout)


def option(command: str, *names: str) -> Optional[str]:
    """The value after ``-o``/``--out`` ... in ``command``, or None."""
    words = shlex.split(command)
    for index, word in enumerate(words[:-1]):
        if word in names:
            return words[index + 1]
    return None


def printed_commands(output: str) -> list[str]:
    """Every ``sched-trace ...`` command in a program's output, from its first word to the line's end."""
    return [match.group(0).rstrip() for match in re.finditer(r"sched-trace (run|report|merge|convert|demo)\b.*", output)]


def trace_files(directory: Path) -> set[Path]:
    suffixes = (".perfetto-trace", ".jsonl", ".json")
    return {p for p in directory.rglob("*") if p.is_file() and p.name.endswith(suffixes)} if directory.is_dir() else set()
