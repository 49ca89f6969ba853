"""Every test here runs on both forms of a probe's hot path (tests/hot_path.py)."""

from tests.hot_path import hot_path  # noqa: F401 (an autouse fixture)
