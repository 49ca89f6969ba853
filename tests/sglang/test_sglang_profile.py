"""The shipped ``sglang`` profile against the installed SGLang's source (sglang 0.5.23 in
.venv-sglang, made by .ci/backends/sglang.sh), read without importing it,
as profile_check reads torch's: every target exists, every extractor's root is a parameter
of its target, and nothing of sglang or torch is imported to find that out.

This checks that the profile names real code with the right parameters; the profile on a
running SGLang server is tested by test_sglang_server.py.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sched_trace import config

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-sglang"


def sglang_site_packages() -> Path:
    relative = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
    return VENV / relative


pytestmark = pytest.mark.skipif(
    not (sglang_site_packages() / "sglang" / "srt" / "managers" / "scheduler.py").exists(),
    reason=f"no SGLang source at {VENV}: run `bash .ci/backends/sglang.sh` (pip install --no-deps sglang)",
)

CHECK = """
import json, sys
from sched_trace import config, profile_check
from sched_trace.commands.run import check_targets
cfg = config.load_profile("sglang")          # raises when a target is missing
check_targets(cfg, [])                       # extractor roots against the functions' parameters
statuses = {spec.target: profile_check.static_status(spec.target) for spec in cfg.instrument}
bad = {}
targets = {spec.target.rsplit(".", 1)[1]: spec for spec in cfg.instrument}
for name, option, wrong in (("_add_request_to_queue", "prompt_tokens", "len(rq.origin_input_ids)"),
                            ("_pp_launch_batch", "microbatch", "mb"),
                            ("checkpoint_kv_cache", "request_id", "request.rid")):
    spec = targets[name] if name in targets else next(s for s in cfg.instrument if s.target.endswith(":" + name))
    entry = dict(spec.options, target=spec.target)
    entry[option] = wrong
    try:
        check_targets(config.parse({"instrument": [entry]}, "bad.toml"), [])
    except Exception as exc:
        bad[option] = str(exc)
renamed = profile_check.static_status("sglang.srt.managers.scheduler:Scheduler.run_batches")
imported = sorted(m for m in sys.modules if m == "sglang" or m.startswith(("sglang.", "torch")))
print(json.dumps({"statuses": statuses, "bad": bad, "renamed": renamed, "imported": imported}))
"""


def test_the_profile_matches_the_installed_sglang_source_without_importing_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(sglang_site_packages())])}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["statuses"]) == len(config.load_profile("sglang").instrument) == 13
    assert set(report["statuses"].values()) == {"found"}, report["statuses"]
    assert report["imported"] == []  # read from source, not imported
    assert "'rq' is not a parameter" in report["bad"]["prompt_tokens"]
    assert "'mb' is not a parameter" in report["bad"]["microbatch"]
    assert "'request' is not a parameter" in report["bad"]["request_id"]  # checkpoint_kv_cache(req, tree_cache)
    assert report["renamed"] == "missing"  # a renamed method is caught from the source alone


def extractor_roots(options: dict) -> set[str]:
    """The parameter each string extractor starts from (``len(batch.reqs)`` -> ``batch``)."""
    texts = [options.get(key) for key in ("microbatch", "batch_size", "batch_id", "requests", "request_id",
                                          "prompt_tokens", "output_tokens", "status", "when", "keep_if")]
    for key in ("rank", "attrs"):
        texts += list((options.get(key) or {}).values())
    roots = set()
    for text in filter(None, texts):
        text = text.strip().removeprefix("not ").strip()
        text = text[4:-1] if text.startswith("len(") else text
        roots.add(text.split(".")[0].split(" ")[0])
    return roots - {"result"}  # keep_if's return value


def test_every_extractor_starts_from_a_parameter_of_its_target_in_the_source() -> None:
    """Also for the targets SGLang decorates (@scheduler_stage_method, a functools.wraps
    wrapper, so sched-trace reads the wrapped signature at run time), which the static
    check in ``sched-trace run`` leaves to import time because a decorator may change it."""
    site = sglang_site_packages()
    for spec in config.load_profile("sglang").instrument:
        module, _, path = spec.target.partition(":")
        tree = ast.parse((site / (module.replace(".", "/") + ".py")).read_text())
        scope, node = tree.body, None
        for part in path.split("."):
            node = next(n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                        and n.name == part)
            scope = getattr(node, "body", [])
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)), spec.target
        arguments = node.args
        params = {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}
        for decorator in node.decorator_list:  # SGLang's own decorators here keep the signature
            assert ast.unparse(decorator).startswith(("scheduler_stage_method", "DynamicGradMode")), spec.target
        assert extractor_roots(spec.options) <= params, (spec.target, extractor_roots(spec.options), params)


def test_the_profile_declares_the_request_lifecycle_and_pp_microbatches() -> None:
    cfg = config.load_profile("sglang")
    by_target = {spec.target.split(":")[1]: spec for spec in cfg.instrument}
    phases = {name: spec.options["phase"] for name, spec in by_target.items() if spec.options.get("kind") == "request"}
    assert sorted(phases.values()) == ["arrived", "finished", "first_token", "first_token", "queued", "scheduled"]
    assert by_target["Scheduler.run_batch"].options["kind"] == "batch"
    assert by_target["Scheduler.run_batch"].options["requests"] == "batch.reqs"
    assert by_target["SchedulerPPMixin._pp_launch_batch"].options["microbatch"] == "mb_id"
    assert by_target["SchedulerPPMixin._pp_launch_batch"].options["stage"] == "run_batch_cpu"  # SGLang's name
    assert by_target["SchedulerPPMixin._pp_launch_batch"].options["level"] == 4  # and SGLang's level
    assert by_target["Scheduler.__init__"].options["kind"] == "thread"  # the scheduler thread's ranks, once


def test_the_busy_polled_stages_keep_spans_only_for_work() -> None:
    """SGLang's event loop calls these thousands of times a second while idle (issue 16.1)."""
    by_target = {spec.target.split(":")[1]: spec.options for spec in config.load_profile("sglang").instrument}
    assert by_target["Scheduler.get_next_batch_to_run"]["keep_if"] == "result.batch_to_run is not None"
    assert by_target["Scheduler.process_input_requests"]["keep_if"] == "recv_reqs"
    extend_tokens = by_target["Scheduler.run_batch"]["attrs"]["extend_tokens"]
    assert extend_tokens.endswith(" if batch.forward_mode._name_ in ('EXTEND', 'MIXED')")
