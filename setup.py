"""The optional C extension; everything else is in pyproject.toml.

``sched_trace._speedups`` is the C form of a probe's hot path (``_speedups.c``) and of
binding a traced method to its instance (``_binding.c``) and of a condition (``_conditions.c``). It is optional: without a
compiler the build goes on and sched-trace runs the same hot path in Python.
"""

from setuptools import Extension, setup

SOURCES = ["sched_trace/_speedups.c", "sched_trace/_binding.c", "sched_trace/_conditions.c",
           "sched_trace/_encode.c"]

setup(ext_modules=[Extension("sched_trace._speedups", SOURCES, optional=True)])
