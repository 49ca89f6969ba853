"""An SGLang-style serving engine on CPU, with no tracing code in it.

One scheduler process per pipeline-parallel rank, continuous batching of prefill
and decode batches, micro-batches flowing through the ranks over gloo, and a
client whose requests carry W3C ``traceparent``. ``sched_trace.toml`` beside this
file instruments it; see docs/serving.md.
"""
