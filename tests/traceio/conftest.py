from __future__ import annotations

import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# Hypothesis keeps its example database under ./.hypothesis by default: write nothing into the checkout.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="sched-trace-hypothesis-"))
