"""The optional C extension; everything else is in pyproject.toml.

``sched_trace._speedups`` is the C form of a probe's hot path (``_speedups.c``), of
binding a traced method to its instance (``_binding.c``), of a condition
(``_conditions.c``), of the exporter thread's frame (``_encode.c``) and of an exporter's
buffer, which holds a probe's events as records (``_ring.c``). It is optional:
without a compiler the build goes on and sched-trace runs the same code in Python.
"""

from setuptools import Extension, setup

SOURCES = ["sched_trace/_speedups.c", "sched_trace/_binding.c", "sched_trace/_conditions.c",
           "sched_trace/_encode.c", "sched_trace/_ring.c"]

setup(ext_modules=[Extension("sched_trace._speedups", SOURCES, optional=True)])
