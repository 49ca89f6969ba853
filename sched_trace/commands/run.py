"""``sched-trace run [--config F] [--profile P] [--level N] [--level-file F] -- python train.py ...``

Configuration travels in environment variables and a ``sitecustomize`` module put
first on ``PYTHONPATH`` applies it before the program's own code runs, in the
program and in every Python child it starts (spawn, subprocess, torchrun workers),
the way ``opentelemetry-instrument`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from .. import _level_file
from .. import config as _config
from .._errors import ConfigError
from . import check as _check

BOOTSTRAP_DIR = Path(__file__).resolve().parent.parent / "_bootstrap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration (default: ./sched_trace.toml if present)")
    parser.add_argument("--profile", action="append", default=[], help="a shipped profile, e.g. torch-pipelining")
    parser.add_argument("--level", type=int, help="verbosity level 0 (off) .. 9")
    parser.add_argument("--level-file", metavar="F",
                        help="every process follows the level in F while F holds one (set it with "
                             "`sched-trace level N --file F`, from outside the running program)")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="-- the command to run")


def child_environment(config_path: "str | None", profiles: list[str], level: "int | None",
                      level_file: "str | None" = None) -> dict[str, str]:
    env = dict(os.environ)
    if level_file:
        env[_level_file.ENV] = _level_file.check_path(level_file, "--level-file")
    if config_path:
        env["SCHED_TRACE_CONFIG"] = str(Path(config_path).resolve())
    if profiles:
        env["SCHED_TRACE_PROFILES"] = ",".join(profiles)
    if level is not None:
        env["SCHED_TRACE_LEVEL"] = str(level)
    env["SCHED_TRACE_BOOTSTRAP"] = "1"
    # One run id for every process this command starts, so rank processes derive the same
    # trace and root span ids for a request (docs/otel.md); one given is kept.
    env.setdefault("SCHED_TRACE_RUN_ID", uuid.uuid4().hex)
    paths = [str(BOOTSTRAP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


#: What stops the program from starting: a target it cannot import, an extractor it cannot read.
#: A target missing from the source is left to the run (bound at run time, or warned about at exit).
REFUSED = (_check.NOT_INSTALLED, _check.SIGNATURE, _check.PARAMETER)


def check_targets(cfg: _config.Config, program: list[str]) -> None:
    """Each target's package must be importable by the program, and its extractors must
    name parameters of the target, as ``sched-trace check`` finds them from the source
    (nothing is imported: the program's modules run in the program only)."""
    search = [os.getcwd()] + [str(Path(arg).resolve().parent) for arg in program if arg.endswith(".py")]
    search += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    saved = list(sys.path)
    sys.path[:0] = [p for p in search if p not in sys.path]  # where the program will look
    try:
        for spec in cfg.instrument:
            row = _check.check_spec(spec, imports=False)
            if row.status in REFUSED:
                source, _, key = spec.where.partition(": ")
                problems = "; ".join(row.problems)
                raise ConfigError(f"target {spec.target!r}: {problems}", source=source, key=key)
    finally:
        sys.path[:] = saved


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
            check_targets(cfg, program)
        env = child_environment(config_path, args.profile, args.level, args.level_file)
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"sched-trace run: {exc}") from None
    # exec keeps our pid: that process warns at exit about targets no process resolved
    env["SCHED_TRACE_RUN_ROOT"] = str(os.getpid())
    env["SCHED_TRACE_RUN_DIR"] = os.path.join(tempfile.gettempdir(), f"sched-trace-run-{os.getpid()}")
    executable = shutil.which(program[0], path=env.get("PATH")) or program[0]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(executable, program, env)
    return 0  # pragma: no cover
