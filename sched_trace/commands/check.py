"""``sched-trace check [--profile P]... [--config F] [--json]``: do the targets still exist?

Resolves every target of the profiles and the config against the packages installed
for this Python, without running the engine: the module and attribute path from the
installed source (imported only to confirm a suspected miss, or when the source
cannot tell), the ``def``'s parameters against each extractor, ``self`` against a
method, and attribute paths through the classes the source declares. One row per
target; exit 0 when every target holds, 1 when one does not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import _extract, _options
from .. import config as _config
from .. import profile_check, source_attrs
from .._errors import ConfigError, InstrumentationError
from .._targets import lookup, parse_target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FOUND, MISSING, NOT_INSTALLED = "found", "missing", "not installed"
SIGNATURE, PARAMETER, ATTRIBUTE, IMPORT_FAILED = (
    "signature changed", "unknown parameter", "unknown attribute", "import failed")
_GRAVITY = (NOT_INSTALLED, IMPORT_FAILED, MISSING, SIGNATURE, PARAMETER, ATTRIBUTE, FOUND)
#: Options whose values are extractors or conditions (strings in a TOML profile).
# From the one option list: extractors and conditions are strings of the grammar; mappings hold them.
EXTRACTOR_KEYS = tuple(name for name, role in _options.ROLES.items() if role in ("extractor", "condition"))
MAPPING_KEYS = tuple(name for name, role in _options.ROLES.items() if role in ("mapping", "attributes"))


@dataclass
class TargetRow:
    """What the installed code says about one ``[[instrument]]`` target."""

    target: str
    stage: str
    kind: str
    source: str
    status: str = FOUND
    problems: list[str] = field(default_factory=list)
    installed: str = ""
    checked_by: str = "source"  # or "import": the source could not tell; "nothing": not allowed to import

    @property
    def ok(self) -> bool:
        return self.status == FOUND

    def fail(self, status: str, message: str) -> None:
        """Add a problem; the row's status is the gravest so far."""
        if self.ok or _GRAVITY.index(status) < _GRAVITY.index(self.status):
            self.status = status
        self.problems.append(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", action="append", default=[],
                        help="a shipped profile to check (repeatable), e.g. vllm")
    parser.add_argument("--config", help="a TOML configuration (or a copy of a profile) to check")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for CI)")


def run(args: argparse.Namespace) -> int:
    if os.getcwd() not in sys.path:  # a config's own modules resolve as for `python -m` from here
        sys.path.insert(0, os.getcwd())
    try:
        configs = _load(args.profile, args.config)
    except ConfigError as exc:
        print(f"sched-trace check: {exc}", file=sys.stderr)
        return 2
    rows = [check_spec(spec, label) for label, cfg in configs for spec in cfg.instrument]
    print(json.dumps(_json(rows), indent=1) if args.json else render(rows))
    return 0 if all(row.ok for row in rows) else 1


def _load(profiles: list[str], config_path: Optional[str]) -> list[tuple[str, _config.Config]]:
    if not profiles and config_path is None:
        if not Path("sched_trace.toml").is_file():
            raise ConfigError("nothing to check: give --profile NAME (shipped: "
                              f"{', '.join(_config.available_profiles())}) or --config FILE")
        config_path = "sched_trace.toml"
    configs = [(f"profile {name}", _profile(name, "--profile")) for name in profiles]
    if config_path is not None:
        data = _read_toml(Path(config_path))
        named = data.pop("profiles", [])
        if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
            raise ConfigError(f"{named!r} must be a list of profile names", source=config_path, key="profiles")
        configs += [(f"profile {name}", _profile(name, config_path)) for name in named]
        configs.append((config_path, _config.parse(data, config_path)))
    return configs


def _profile(name: str, source: str) -> _config.Config:
    """A shipped profile as written: ``load_profile`` would raise at its first missing target."""
    if name not in _config.available_profiles():
        raise ConfigError(f"unknown profile {name!r}; shipped profiles: "
                          f"{', '.join(_config.available_profiles())}", source=source)
    return _config.load(_config.PROFILE_DIR / f"{name}.toml")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None
    except (OSError, ValueError) as exc:  # a directory, unreadable, not UTF-8
        raise ConfigError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}", source=str(path)) from None


# --- one target ----------------------------------------------------------------------


def check_spec(spec: _config.TargetSpec, source: str = "", *, imports: bool = True) -> TargetRow:
    """One row: does ``spec``'s target exist, and can its extractors read what they name?

    ``imports=False`` (``sched-trace run``, before the program starts) reads the source
    only: what only an import could tell is left unchecked (``checked_by`` "nothing").
    """
    options = spec.options
    kind = options.get("kind", "stage")
    module_name, path, key = parse_target(spec.target)
    stage = options.get("stage") or options.get("phase") or (key or path[-1])
    row = TargetRow(spec.target, stage, kind, source or spec.where,
                    installed=profile_check.installed_version(module_name))
    top = module_name.split(".")[0]
    if not _installed(top):
        row.fail(NOT_INSTALLED, f"no module named {top!r} is importable for {sys.executable} "
                                "(check the spelling, the working directory, or PYTHONPATH)")
        return row
    found = profile_check.lookup(module_name, path, key) if profile_check.find_source(module_name) else None
    if found is not None and found.status == "found" and key is None:
        _check_source(row, found, options)
    elif not imports:
        row.checked_by = "nothing"
        if found is not None and found.status == "missing":
            row.fail(MISSING, f"{found.message} (installed: {row.installed}; not confirmed by importing it)")
    else:  # missing in the source (confirmed on the live module), undecided, or a compiled module
        _check_live(row, module_name, options, key, found.message if found is not None else None)
    return row


def _installed(top: str) -> bool:
    try:
        return top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _check_source(row: TargetRow, found: profile_check.SourceLookup, options: Any) -> None:
    node = found.definition[2]
    where = row.target.split(":", 1)[1]
    if isinstance(node, ast.ClassDef) or (isinstance(node, (ast.Assign, ast.AnnAssign)) and _literal(node)):
        row.fail(SIGNATURE, f"{where} is now a {'class' if isinstance(node, ast.ClassDef) else 'constant'}, "
                            "not a function: the signature changed")
        return
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return  # bound by an assignment or an import: what it is shows at run time
    signature = source_attrs.Signature(node, found.owner is not None)
    files = tuple(filter(None, {profile_check.find_source(found.definition[0]),
                                profile_check.find_source(row.target.split(":")[0])}))
    for label, text in _extractors(options):
        for steps in source_attrs.paths(text):
            problem = source_attrs.root_problem(signature, steps[0], label, where)
            if problem is not None:
                row.fail(SIGNATURE if steps[0] == "self" else PARAMETER, problem)
                continue
            start = source_attrs.root_class(signature, steps[0], found.definition, found.owner)
            dotted = ".".join(steps)
            problem = source_attrs.path_problem(start, steps[1:], label if dotted == text else f"{label} ({dotted})", files)
            if problem is not None:
                row.fail(ATTRIBUTE, problem)


def _literal(node: Any) -> bool:
    return isinstance(node.value, ast.Constant)


def _check_live(row: TargetRow, module_name: str, options: Any, key: Optional[str],
                miss: Optional[str]) -> None:
    """Import the module and look at the real object: the source could not tell, or says
    ``miss`` (names bound at run time do not show in the source)."""
    row.checked_by = "import"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the engine's own import error, whatever it is
        failed = f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
        if miss is not None:
            row.checked_by = "source"
            row.fail(MISSING, f"{miss} (installed: {row.installed}; {failed})")
        else:
            row.fail(IMPORT_FAILED, failed)
        return
    try:
        function = lookup(row.target, module).original
    except InstrumentationError as exc:
        row.fail(MISSING, f"{miss or exc} (installed: {row.installed})")
        return
    if key is not None:
        return
    if not callable(function):
        row.fail(SIGNATURE, f"{row.target.split(':', 1)[1]} is a {type(function).__name__}, not a function: "
                            "the signature changed")
        return
    params = _extract.Parameters(getattr(function, "__func__", function))
    for label, text in _extractors(options):
        for steps in source_attrs.paths(text):
            if steps[0] in source_attrs.SPECIAL_ROOTS:
                continue
            try:
                params.check(steps[0], label, text)
            except Exception as exc:
                row.fail(PARAMETER, str(exc))


def _extractors(options: Any) -> list[tuple[str, str]]:
    found = [(key, options[key]) for key in EXTRACTOR_KEYS if isinstance(options.get(key), str)]
    for key in MAPPING_KEYS:
        for name, text in (options.get(key) or {}).items():
            if isinstance(text, str):
                found.append((f"{key}[{name!r}]", text))
    return [(f"{label}={text!r}", text) for label, text in found]


# --- output --------------------------------------------------------------------------


def render(rows: list[TargetRow]) -> str:
    lines: list[str] = []
    width = max((len(row.status) for row in rows), default=5)
    source = None
    for row in rows:
        if row.source != source:
            source = row.source
            lines.append(f"{source}:")
        how = "" if row.checked_by == "source" else "  (checked by importing it)"
        lines.append(f"  {row.status:<{width}}  {row.target}  [{row.kind} {row.stage}]{how}")
        lines += [f"  {'':<{width}}    {problem}" for problem in row.problems]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    lines.append(f"{len(rows)} target{'s' if len(rows) != 1 else ''}: {summary or 'none'}"
                 + ("" if all(row.ok for row in rows) else " (exit 1)"))
    return "\n".join(lines)


def _json(rows: list[TargetRow]) -> dict[str, Any]:
    return {"ok": all(row.ok for row in rows), "python": sys.executable,
            "targets": [dict(asdict(row), ok=row.ok) for row in rows]}
