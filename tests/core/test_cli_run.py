"""`sched-trace run`: configuration applied before the program's code, in children too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import multiprocessing, subprocess, sys
    from tests.core.sample_scheduler import Batch, Scheduler
    import sched_trace

    class Dump:
        def sched_trace_stage_end(self, event):
            print("EVENT", event.name, event.microbatch, event.batch_size, flush=True)

    def child():
        sched_trace.register(Dump())
        Scheduler().run_batch(Batch([1, 2, 3]), 2)

    if __name__ == "__main__":
        sched_trace.register(Dump())
        Scheduler().run_batch(Batch([1]), 1)
        process = multiprocessing.get_context("spawn").Process(target=child)
        process.start(); process.join()
        subprocess.run([sys.executable, "-c", "from tests.core.sample_scheduler import *; "
                        "import sched_trace, __main__; "
                        "sched_trace.register(type('D', (), {'sched_trace_stage_end': lambda s, event: print('EVENT', event.name, flush=True)})()); "
                        "Scheduler().run_batch(Batch([]))"], check=True)
""")

CONFIG = textwrap.dedent("""
    [[instrument]]
    target = "tests.core.sample_scheduler:Scheduler.run_batch"
    stage = "run_batch_cpu"
    level = 4
    microbatch = "mb_id"
    batch_size = "len(batch.reqs)"
""")


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "sched_trace.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_instruments_the_program_and_its_children(tmp_path):
    (tmp_path / "sched_trace.toml").write_text(CONFIG)
    (tmp_path / "serve.py").write_text(PROGRAM)
    result = run_cli(tmp_path, "run", "--", sys.executable, "serve.py")
    assert result.returncode == 0, result.stderr
    events = [line for line in result.stdout.splitlines() if line.startswith("EVENT")]
    assert events == ["EVENT run_batch_cpu 1 1", "EVENT run_batch_cpu 2 3", "EVENT run_batch_cpu"]


def test_run_refuses_a_bad_config_before_starting_the_program(tmp_path):
    (tmp_path / "bad.toml").write_text("[[instrument]]\ntarget = 'x:y'\nmicrobatch = 'len(a'\n")
    (tmp_path / "never.py").write_text("open('started', 'w').close()")
    result = run_cli(tmp_path, "run", "--config", "bad.toml", "--", sys.executable, "never.py")
    assert result.returncode != 0
    assert "bad.toml: [instrument[0]] microbatch='len(a' is malformed" in result.stderr
    assert not (tmp_path / "started").exists()


def test_run_without_a_program_explains_usage(tmp_path):
    result = run_cli(tmp_path, "run")
    assert result.returncode != 0 and "give the command after '--'" in result.stderr


def test_the_command_in_the_instrument_guide_runs(tmp_path):
    text = (REPO / "docs" / "instrument.md").read_text()
    command = next(line for line in text.splitlines() if line.startswith("sched-trace run --config"))
    args = command.split()[1:]  # after `sched-trace`
    args[args.index("python")] = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run([sys.executable, "-m", "sched_trace.cli", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "served 18 request-steps" in result.stdout


# --- the program's own main module as the target (python -m / a script path) -----------


def copy_minimal_example(root: Path) -> None:
    """``examples/minimal`` under ``root``, so a run there writes its traces there, not in the checkout."""
    for relative in ("examples/__init__.py", "examples/minimal/__init__.py", "examples/minimal/engine.py",
                     "examples/minimal/sched_trace.toml"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text((REPO / relative).read_text())


def traced_stage_names(out: Path) -> list[str]:
    from sched_trace import traceio

    files = traceio.expand_paths([out / "perfetto"])
    assert files, f"no Perfetto trace under {out}"
    return sorted(e.name for trace in traceio.read_traces(files) for e in trace.events)


def run_exporting(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHED_TRACE_BLOCK": "prometheus,cuda"}
    return subprocess.run([sys.executable, "-m", "sched_trace.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_dash_m_instruments_the_target_module_run_as_main(tmp_path):
    copy_minimal_example(tmp_path)
    result = run_exporting(tmp_path, "run", "--config", "examples/minimal/sched_trace.toml", "--",
                           sys.executable, "-m", "examples.minimal.engine")
    assert result.returncode == 0, result.stderr
    assert "never instrumented" not in result.stderr
    names = traced_stage_names(tmp_path / "sched-trace-out")
    # engine.main(): 6 steps; requests need 2-4 tokens, so 6, 6, 4, 2 are running in the
    # first four (2 micro-batches each) and the last two find nothing to run
    assert names.count("scheduler_step") == 6
    assert names.count("run_batch_cpu") == 8 and names.count("process_batch_result") == 4


def test_run_instruments_a_script_that_is_the_target_file(tmp_path):
    copy_minimal_example(tmp_path)
    result = run_exporting(tmp_path, "run", "--config", "examples/minimal/sched_trace.toml", "--",
                           sys.executable, "examples/minimal/engine.py")
    assert result.returncode == 0, result.stderr
    assert traced_stage_names(tmp_path / "sched-trace-out").count("scheduler_step") == 6


def test_run_warns_once_at_exit_about_targets_no_process_resolved(tmp_path):
    copy_minimal_example(tmp_path)
    config = (tmp_path / "examples/minimal/sched_trace.toml").read_text()
    (tmp_path / "typo.toml").write_text(config.replace("Engine.step\"", "Engine.stepp\"") +
                                        '\n[[instrument]]\ntarget = "json.decoder:JSONDecoder.decode"\n')
    # json.decoder is imported only in a child: resolved there, so not reported by the parent
    program = ("import subprocess, sys; from examples.minimal.engine import main; main(); "
               "subprocess.run([sys.executable, '-c', 'import json'], check=True)")
    result = run_cli(tmp_path, "run", "--config", "typo.toml", "--", sys.executable, "-c", program)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("never instrumented") == 1, result.stderr
    assert "1 configured target(s)" in result.stderr
    assert "examples.minimal.engine:Engine.stepp: not found in its module" in result.stderr
    assert "json.decoder" not in result.stderr.split("never instrumented")[1]


def test_run_refuses_an_extractor_naming_no_parameter_before_starting(tmp_path):
    copy_minimal_example(tmp_path)
    config = (tmp_path / "examples/minimal/sched_trace.toml").read_text()
    (tmp_path / "bad.toml").write_text(config.replace('microbatch = "mb_id"', 'microbatch = "mb"'))
    (tmp_path / "never.py").write_text("open('started', 'w').close()")
    result = run_cli(tmp_path, "run", "--config", "bad.toml", "--", sys.executable, "never.py")
    assert result.returncode == 1
    assert ("bad.toml: [instrument[1]] target 'examples.minimal.engine:Engine.run_batch': microbatch='mb': "
            "'mb' is not a parameter of Engine.run_batch (parameters: batch, mb_id). "
            "Did you mean 'mb_id'?") in result.stderr
    assert not (tmp_path / "started").exists()


def test_a_bad_extractor_found_at_import_warns_and_never_breaks_the_import(tmp_path):
    copy_minimal_example(tmp_path)
    program = textwrap.dedent("""
        import warnings
        import sched_trace
        sched_trace.configure(autoload=False)
        sched_trace.instrument("examples.minimal.engine:Engine.run_batch", microbatch="mb")  # not imported yet
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from examples.minimal.engine import main
        main()
        print("WARNED", [str(w.message) for w in caught])
        print("UNRESOLVED", sched_trace.stats()["unresolved_targets"])
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "served 18 request-steps" in result.stdout
    assert "'mb' is not a parameter of the wrapped function" in result.stdout.split("WARNED")[1]
    assert "UNRESOLVED ['examples.minimal.engine:Engine.run_batch']" in result.stdout


def test_config_errors_found_by_a_plugin_read_like_the_launchers_own(tmp_path):
    (tmp_path / "typo.toml").write_text('[plugins.perfetto]\ndirectoy = "traces"\n')
    (tmp_path / "single.toml").write_text('[instrument]\ntarget = "json:dumps"\n')
    plugin = run_exporting(tmp_path, "run", "--config", "typo.toml", "--", sys.executable, "-c", "print('ran')")
    launcher = run_exporting(tmp_path, "run", "--config", "single.toml", "--", sys.executable, "-c", "print('ran')")
    assert (plugin.returncode, launcher.returncode) == (1, 1)
    assert plugin.stderr.startswith("sched-trace run: ") and launcher.stderr.startswith("sched-trace run: ")
    assert "[plugins.perfetto.directoy] unknown key 'directoy'" in plugin.stderr and "'directory'" in plugin.stderr
    assert "[instrument] is a single table; write [[instrument]] (double brackets)" in launcher.stderr
    assert "ran" not in plugin.stdout + launcher.stdout
