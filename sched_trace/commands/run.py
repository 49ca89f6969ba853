"""``sched-trace run [--config F] [--profile P] [--level N] -- python train.py ...``

Configuration travels in environment variables and a ``sitecustomize`` module put
first on ``PYTHONPATH`` applies it before the program's own code runs, in the
program and in every Python child it starts (spawn, subprocess, torchrun workers),
the way ``opentelemetry-instrument`` does.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .. import config as _config
from ..errors import ConfigError

BOOTSTRAP_DIR = Path(__file__).resolve().parent.parent / "_bootstrap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration (default: ./sched_trace.toml if present)")
    parser.add_argument("--profile", action="append", default=[], help="a shipped profile, e.g. torch-pipelining")
    parser.add_argument("--level", type=int, help="verbosity level 0 (off) .. 9")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="-- the command to run")


def child_environment(config_path: "str | None", profiles: list[str], level: "int | None") -> dict[str, str]:
    env = dict(os.environ)
    if config_path:
        env["SCHED_TRACE_CONFIG"] = str(Path(config_path).resolve())
    if profiles:
        env["SCHED_TRACE_PROFILES"] = ",".join(profiles)
    if level is not None:
        env["SCHED_TRACE_LEVEL"] = str(level)
    env["SCHED_TRACE_BOOTSTRAP"] = "1"
    paths = [str(BOOTSTRAP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def check_target_packages(cfg: _config.Config, program: list[str]) -> None:
    """Each target's top-level package must be importable by the program."""
    search = [os.getcwd()] + [str(Path(arg).resolve().parent) for arg in program if arg.endswith(".py")]
    search += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for spec in cfg.instrument:
        top = spec.target.split(":")[0].split(".")[0]
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            continue
        if any(importlib.machinery.PathFinder.find_spec(top, [path]) for path in search):
            continue
        source, _, key = spec.where.partition(": ")
        raise ConfigError(
            f"target {spec.target!r}: no module named {top!r} is importable from here "
            "(check the spelling, the working directory, or PYTHONPATH)",
            source=source, key=key,
        )


def run(args: argparse.Namespace) -> int:
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        raise SystemExit("sched-trace run: give the command after '--', e.g. sched-trace run -- python train.py")
    config_path = args.config
    if config_path is None and Path("sched_trace.toml").is_file():
        config_path = "sched_trace.toml"
    try:  # fail here, before the program starts, on a bad file, profile or target package
        configs = [_config.load(config_path)] if config_path else []
        configs += [_config.load_profile(name, "--profile") for name in args.profile]
        for cfg in configs:
            check_target_packages(cfg, program)
    except ConfigError as exc:
        raise SystemExit(f"sched-trace run: {exc}") from None
    env = child_environment(config_path, args.profile, args.level)
    # exec keeps our pid: that process warns at exit about targets no process resolved
    env["SCHED_TRACE_RUN_ROOT"] = str(os.getpid())
    env["SCHED_TRACE_RUN_DIR"] = os.path.join(tempfile.gettempdir(), f"sched-trace-run-{os.getpid()}")
    executable = shutil.which(program[0], path=env.get("PATH")) or program[0]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(executable, program, env)
    return 0  # pragma: no cover
