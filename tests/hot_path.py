"""The ``hot_path`` fixture: a test runs on both forms of the hot path, the C one
(``sched_trace._speedups``, what an install with a compiler runs) and the Python it
follows (``_hotpath``'s templates, ``BackgroundExporter.append``). Probes and exporter
buffers made while the test runs take the form its parameter names (``_native``, the one
switch). tests/core and tests/requests use it for every test (their conftest)."""

from __future__ import annotations

import pytest

from sched_trace import _native


@pytest.fixture(autouse=True, params=["c", "python"])
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c" and _native.speedups is None:
        pytest.skip("the C hot path is not built here (no compiler at install, or SCHED_TRACE_PURE_PYTHON=1)")
    if request.param == "python":
        monkeypatch.setattr(_native, "speedups", None)
    return request.param
