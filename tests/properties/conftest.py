"""Hypothesis for the parsers: bounded examples, no example database in the checkout."""

from __future__ import annotations

import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# Hypothesis caches under ./.hypothesis by default: tests write nothing into the checkout.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="sched-trace-hypothesis-"))

# No deadline: a busy CI machine must not fail a test for being slow (hangs are
# guarded separately, in a subprocess with a timeout).
hypothesis.settings.register_profile(
    "sched-trace", max_examples=300, deadline=None, database=None, derandomize=False,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("sched-trace")
