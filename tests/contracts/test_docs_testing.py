"""docs/testing.md's engine CI test runs as a user's test module: green, then recorded, then red
when the engine loses a target; the shape and diff the page shows are what it produces."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "testing.md").read_text()


def block(language: str, starts: str) -> str:
    found = [b for b in re.findall(rf"^```{language}\n(.*?)^```", DOC, re.S | re.M) if b.startswith(starts)]
    assert len(found) == 1, f"docs/testing.md: one ```{language} block starting {starts!r}"
    return found[0]


def test_the_engine_ci_test_of_the_docs_records_compares_and_catches_a_renamed_target(pytester) -> None:
    pytester.makepyfile(test_trace_contract=block("python", "# not-run: a pytest test module"))
    shutil.copytree(REPO / "examples", pytester.path / "examples", ignore=shutil.ignore_patterns("__pycache__"))

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)  # nothing recorded yet
    pytester.runpytest("-p", "no:cacheprovider", "--sched-trace-snapshot-update").assert_outcomes(passed=1)
    recorded = pytester.path / "__snapshots__" / "test_trace_contract" / "test_the_engine_keeps_its_trace_contract.txt"
    shape = block("text", "scheduler_step x6")
    assert recorded.read_text().split("\n", 2)[2] == shape  # the page shows what is recorded
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)

    engine = pytester.path / "examples" / "minimal" / "engine.py"
    engine.write_text(engine.read_text().replace("run_batch(", "forward_batch("))  # the engine's next release
    lost = pytester.runpytest("-p", "no:cacheprovider")
    lost.assert_outcomes(failed=1)
    lost.stdout.fnmatch_lines(["*stage 'run_batch_cpu' missing on PP0: nothing at all was emitted on PP0*"])

    pytester.makepyfile(test_trace_contract=block("python", "# not-run: a pytest test module").replace(
        "trace = CONTRACT.check(sched_trace_capture)", "trace = sched_trace_capture.trace()"))
    lost = pytester.runpytest("-p", "no:cacheprovider")
    diff = block("text", "the trace no longer has the shape").splitlines()
    lost.stdout.fnmatch_lines(["*the trace no longer has the shape recorded in *test_the_engine_keeps_its_trace_contract.txt"
                               " (- recorded, + emitted now):"]
                              + [f"*{line.replace('[', '[[]')}" for line in diff[1:]])
