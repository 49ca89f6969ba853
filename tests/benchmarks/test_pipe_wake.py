"""benchmarks/pipe_wake.py (docs/performance.md, "The exporter process naps") runs as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_command_writes_every_frame_to_both_readers_and_prints_the_ratio():
    done = subprocess.run([sys.executable, "-m", "benchmarks.pipe_wake", "--gap", "0.02", "--frames", "4", "--evict"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["reader waits", "reader naps", "napping reader / waiting reader"]
    assert all("4 frames 0.02 s apart, caches evicted" in line for line in lines[:2])
    assert float(lines[2].split(": ")[1]) > 0
