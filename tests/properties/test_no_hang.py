"""Adversarial sizes never hang a parser (checked in a child process; the timeout is only a hang guard)."""

from __future__ import annotations

import subprocess
import sys

CHILD = r'''
from sched_trace import _extract as extract, config
from sched_trace._errors import SchedTraceError
from sched_trace._rank import parse_traceparent

n = 200_000
inputs = ["a." * n + "!", "len(" * n, "a" * n + " .", "self" + ".x" * n, " " * n + "x(", "a" + "\t" * n + ".b!"]
for spec in inputs:
    try:
        extract.parse(spec, "fuzz", extract.Parameters(None))
    except SchedTraceError:
        pass
for value in ["00-" + "a" * n, "-" * n, "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "-x" * n]:
    assert parse_traceparent(value) is None
deep = {"instrument": [{"target": "a:b", "attrs": {f"k{i}": "x." * 100 + "y" for i in range(2000)}}]}
config.parse(deep, "big.toml")
try:
    config.parse({"instrument": [{"target": "a" * n + ":b"}]}, "long.toml")
except SchedTraceError:
    pass
print("ok")
'''


def test_huge_and_adversarial_inputs_finish():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
