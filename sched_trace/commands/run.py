"""``sched-trace run [--config F] [--profile P] [--level N] -- python train.py ...``

Configuration travels in environment variables and a ``sitecustomize`` module put
first on ``PYTHONPATH`` applies it before the program's own code runs, in the
program and in every Python child it starts (spawn, subprocess, torchrun workers),
the way ``opentelemetry-instrument`` does.
"""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from .. import _extract, _options
from .. import config as _config
from .._errors import ConfigError, ExtractorError
from .._targets import parse_target

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
    # One run id for every process this command starts, so rank processes derive the same
    # trace and root span ids for a request (docs/otel.md); one given is kept.
    env.setdefault("SCHED_TRACE_RUN_ID", uuid.uuid4().hex)
    paths = [str(BOOTSTRAP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _module_file(module: str, search: list[str]) -> "str | None":
    """The source file of ``module``, found without importing it or its packages."""
    locations: "list[str] | None" = search
    spec = None
    parts = module.split(".")
    for index in range(len(parts)):
        # By its own name: a namespace package's dotted name needs its parent imported.
        spec = importlib.machinery.PathFinder.find_spec(parts[index], locations)
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
    origin = getattr(spec, "origin", None)
    return origin if origin and origin.endswith(".py") else None


def _static_function(source_file: str, path: list[str]) -> "object | None":
    """A stand-in with the target's parameters, read from its source; None when unsure."""
    try:
        tree = ast.parse(Path(source_file).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    scope: list = tree.body
    node = None
    for part in path:
        node = next((n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return None  # inherited, generated, or assigned: checked when the module is imported
        scope = node.body
    plain = {"staticmethod", "classmethod"}
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or any(
            not (isinstance(d, ast.Name) and d.id in plain) for d in node.decorator_list):
        return None  # a decorator may change the signature
    arguments = node.args
    for arg in arguments.posonlyargs + arguments.args + arguments.kwonlyargs + [arguments.vararg, arguments.kwarg]:
        if arg is not None:
            arg.annotation = None
    arguments.defaults = [ast.Constant(None) for _ in arguments.defaults]
    arguments.kw_defaults = [None if d is None else ast.Constant(None) for d in arguments.kw_defaults]
    stub = ast.FunctionDef(name=node.name, args=arguments, body=[ast.Pass()], decorator_list=[], returns=None)
    module = ast.fix_missing_locations(ast.Module(body=[stub], type_ignores=[]))
    namespace: dict = {}
    try:
        exec(compile(module, source_file, "exec"), namespace)  # only a def with an empty body
    except (SyntaxError, TypeError, ValueError):  # syntax this Python cannot rebuild: check at import
        return None
    return namespace[node.name]


def check_targets(cfg: _config.Config, program: list[str]) -> None:
    """Each target's package must be importable by the program, and its extractors must
    name parameters of the target when its source can be read without importing it."""
    search = [os.getcwd()] + [str(Path(arg).resolve().parent) for arg in program if arg.endswith(".py")]
    search += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    search += [p for p in sys.path if p]
    for spec in cfg.instrument:
        source, _, key = spec.where.partition(": ")
        module, path, table_key = parse_target(spec.target)
        top = module.split(".")[0]
        importable = top in sys.modules or importlib.util.find_spec(top) is not None
        if not importable and not any(importlib.machinery.PathFinder.find_spec(top, [p]) for p in search):
            raise ConfigError(
                f"target {spec.target!r}: no module named {top!r} is importable from here "
                "(check the spelling, the working directory, or PYTHONPATH)",
                source=source, key=key,
            )
        source_file = _module_file(module, search) if table_key is None else None
        function = _static_function(source_file, path) if source_file else None
        if function is not None:
            try:
                _options.check_grammar(spec.options, _extract.Parameters(function))  # type: ignore[arg-type]
            except ExtractorError as exc:
                raise ConfigError(f"target {spec.target!r}: {exc}", source=source, key=key) from None


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
