"""Put on PYTHONPATH by ``sched-trace run``: configure before the program's own code."""

import os
import sys


def _bootstrap() -> None:
    if os.environ.get("SCHED_TRACE_BOOTSTRAP") != "1":
        return
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        import sched_trace
        from sched_trace import config as _config
        from sched_trace._instrument import DEFER_MISSING_MODULES

        DEFER_MISSING_MODULES[0] = True

        cfg = _config.resolve(None)
        for name in filter(None, os.environ.get("SCHED_TRACE_PROFILES", "").split(",")):
            cfg = _config.merge(cfg, _config.load_profile(name, "SCHED_TRACE_PROFILES"))
        sched_trace.configure(config=cfg)
        import sched_trace_main  # beside this file: targets in the main module, the exit warning

        sched_trace_main.watch_main_module()
        profiles = str(_config.PROFILE_DIR)
        sched_trace_main.watch_unresolved([s.target for s in cfg.instrument if not s.where.startswith(profiles)])
    except Exception as exc:  # a broken setup must say so, not silently trace nothing
        # A bad plugin key reads like the launcher's own config errors: same prefix, exit 1.
        bad_config = any(k.__name__ == "ConfigError" for k in type(exc).__mro__)
        sys.stderr.write(f"sched-trace run: {exc}\n" if bad_config else f"sched-trace: not configured: {exc}\n")
        sys.stderr.flush()
        if os.environ.get("SCHED_TRACE_STRICT", "1") == "1":
            os._exit(1 if bad_config else 2)  # SystemExit here would be reported as a broken site module
    # Chain to a sitecustomize that ours shadows.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    saved = sys.modules.pop("sitecustomize", None)
    try:
        import importlib

        try:
            importlib.import_module("sitecustomize")
        except ImportError:
            pass
    finally:
        if saved is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = saved


_bootstrap()
