"""Exporters off the scheduler's path: one event encoding, one processor, one exporter process.

    codec       events -> frame bytes -> events (the one encoding; request contexts)
    contexts    request ids and W3C trace contexts, resolved once in the scheduler process
    frames      length-prefixed frames on the pipes
    exporter    what a plugin supplies: an Exporter (export, flush, shutdown, counters)
    processor   ExportProcessor: buffer + exporter thread in front, the exporter in a thread or a process
    process     the scheduler process's handle on its exporter process (start, restart, counters)
    child       the exporter process's main loop (``python -m sched_trace._exporter.child``)
    plugin      ExporterPlugin: a whole plugin from one Exporter class

Plugins reach all of this through :mod:`sched_trace.export`.
"""
