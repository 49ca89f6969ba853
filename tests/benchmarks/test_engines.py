"""The engines benchmark turns its drivers' measurements into rows and the per-target table.

The drivers need real engines (.venv-vllm, .venv-sglang); here a measurement of their
shape, made up, goes through the same arithmetic. Numbers are reported, never asserted
by the suite: this checks the arithmetic and the shape only.
"""

from __future__ import annotations

import statistics

import pytest
from pytest import approx

from benchmarks import bench_engines

STEP = "vllm.v1.engine.core:EngineCore.step"
ARRIVED = "vllm.v1.core.sched.scheduler:Scheduler.add_request"


def targets_result(batch: int) -> dict:
    """Two rounds of 10 steps, each step one engine_step call, each round ``batch`` arrivals."""
    def rounds(cpu_s: float) -> list:
        return [{"tokens": 320, "wall_s": 0.1, "engine_cpu_s": cpu_s, "steps": 10}] * 2

    return {
        "requests": batch, "tokens": 32, "batch": batch, "wrapt_passthrough_ns": 500.0,
        "rounds": {"untraced": rounds(0.01), "passthrough": rounds(0.0101), "traced": rounds(0.0102)},
        "labels": {STEP: "batch:engine_step", ARRIVED: "request:add_request"},
        # per round, the time of each call in the shim: traced 3 us over the passthrough's
        "meters": {"passthrough": {STEP: [[1000] * 10] * 2, ARRIVED: [[1000] * batch] * 2},
                   "traced": {STEP: [[4000] * 10] * 2, ARRIVED: [[2000] * batch] * 2}},
        "warm_ns": {STEP: 1500.0, ARRIVED: 800.0},
    }


def test_per_target_cost_is_calls_per_step_times_the_traced_minus_passthrough_median() -> None:
    costs = {c["target"]: c for c in bench_engines.target_costs(targets_result(8))}
    step = costs["EngineCore.step"]
    assert (step["kind"], step["name"], step["calls_per_step"]) == ("batch", "engine_step", 1.0)
    assert step["ns_per_call"] == 3000 and step["ns_per_step"] == 3000 and step["warm_ns_per_call"] == 1500
    assert step["share"] == 3000 / 1e6  # of the untraced step: 10 ms / 10 steps
    arrived = costs["Scheduler.add_request"]
    assert arrived["calls_per_step"] == 0.8 and arrived["ns_per_step"] == 800


def test_step_rows_split_the_step_part_from_the_request_part_and_hold_the_30_us_target() -> None:
    rows = bench_engines.step_rows({8: targets_result(8), 256: targets_result(256)}, "vLLM")
    assert [r["figure"].split(", ")[1] for r in rows] == ["batch 8", "batch 256"]
    small, large = rows
    # step: 3 us + wrapt 0.5 us; requests: 1 us x calls per step + wrapt 0.5 us each
    assert (small["value"], large["value"]) == approx((3.5 + 0.8 * 1.5, 3.5 + 25.6 * 1.5))
    assert small["met"] and not large["met"] and small["target"] == "<= 30 us"
    assert "3.5 us for the step's batch and stages" in small["note"]


def test_the_table_has_a_row_per_target_that_ran_and_two_for_the_binding() -> None:
    lines = bench_engines.table({8: targets_result(8), 64: dict(targets_result(64), binding_ns=200.0)}).splitlines()
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == lines[-1].count("|") == 9
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| `EngineCore.step`", "| `Scheduler.add_request`", "| binding and wrapper call, every call above",
        "| (the same with a wrapt proxy's binding, for comparison)"]
    assert "| 1.00 | 1.00 | 3.00 | 1.50 | 3.00 |" in lines[2]
    # 1 + 6.4 calls per step at batch 64: 7.4 x 0.2 us, and x 0.5 us with wrapt's, of a 1 ms step
    assert lines[-2].endswith("| 0.20 | | 1.48 | 0.15% |") and lines[-1].endswith("| 0.50 | | 3.70 | 0.37% |")


def test_the_step_row_counts_the_binding_and_falls_back_to_wrapt_for_older_results() -> None:
    (new,) = bench_engines.step_rows({8: dict(targets_result(8), binding_ns=200.0)}, "vLLM")
    (old,) = bench_engines.step_rows({8: targets_result(8)}, "vLLM")  # wrapt's 500 ns
    calls_per_step = 1 + 0.8  # the step, and 8 arrivals over 10 steps
    assert old["value"] - new["value"] == approx(0.3 * calls_per_step)


def test_throughput_rows_pair_each_case_with_its_untraced_round() -> None:
    def rounds(wall: list, cpu: list) -> list:
        return [{"tokens": 100, "wall_s": w, "engine_cpu_s": c, "steps": 10, "other_threads_cpu_s": 0.0,
                 "children_cpu_s": 0.01, "gc_ms": 0.0, "gc_collections": [1, 0, 0]} for w, c in zip(wall, cpu)]

    result = {"requests": 4, "tokens": 25, "batch": 4, "rounds": {
        "untraced": rounds([1.0, 2.0, 1.0], [0.5, 1.0, 0.5]),
        "default": rounds([1.1, 2.0, 1.0], [0.55, 1.0, 0.5]),
        "level1": rounds([1.0, 2.0, 1.0], [0.5, 1.0, 0.5])}}
    rows = {r["figure"]: r for r in bench_engines.throughput_rows(result, "vLLM")}
    throughput = rows["vLLM throughput, traced at the default level vs untraced"]
    assert throughput["ratio"] == 1.0 and "1 / 1.1" not in throughput["note"] and "0.91" in throughput["note"]
    assert rows["vLLM engine-thread CPU per output token, default level vs untraced"]["ratio"] == 1.0
    assert rows["vLLM CPU elsewhere per output token at the default level: exporter process"]["value"] == approx(100)


def test_interleaved_rows_charge_the_exporter_thread_to_the_traced_steps() -> None:
    pairs = [{"cpu_traced": 5_100_000 + d, "cpu_untraced": 5_000_000, "wall_traced": 5_200_000 + d,
              "wall_untraced": 5_100_000, "tokens_traced": 64, "tokens_untraced": 64} for d in (0, 10_000, -10_000)]
    result = {"pairs": pairs, "traced_steps": 10, "exporter_thread_cpu_s": 0.0005}  # 50 us per traced step
    rows = {r["figure"]: r for r in bench_engines.interleaved_rows({64: result}, "vLLM")}
    step = rows["vLLM engine-thread CPU per decode step, default level minus untraced, batch 64"]
    assert step["value"] == approx(100) and step["baseline"] == approx(5000) and not step["met"]
    cpu = rows["vLLM engine-thread CPU per output token, default level vs untraced, step-interleaved, batch 64"]
    assert cpu["ratio"] == approx(1.02) and not cpu["met"]
    speed = rows["vLLM throughput, default level vs untraced, step-interleaved, batch 64"]
    assert speed["ratio"] == approx(5_100_000 / 5_250_000) and "50.0 us" in speed["note"]
    assert "frames encoded" not in speed["note"]  # a result from before the counters says nothing of them
    result["otel"] = {"frames_in_c": 30, "frames_in_python": 2}
    speed, = [r for r in bench_engines.interleaved_rows({64: result}, "vLLM") if "throughput" in r["figure"]]
    assert "frames encoded in C: 30 of 32" in speed["note"]
    # every sched-trace thread's CPU, where the run counted it, is what is charged: 100 us per traced step
    result.update(threads_cpu_s=0.001, by_thread_cpu_s={"sched-trace-otel": 0.0008, "sched-trace-otel-replies": 0.0002})
    speed, = [r for r in bench_engines.interleaved_rows({64: result}, "vLLM") if "throughput" in r["figure"]]
    assert speed["ratio"] == approx(5_100_000 / 5_300_000)
    assert "(100.0 us:" in speed["note"] and "50.0 us of it in export()" in speed["note"]
    assert "sched-trace-otel 80.0, sched-trace-otel-replies 20.0" in speed["note"]


def test_steps_pair_only_as_decode_steps_with_the_same_tokens() -> None:
    # (traced, cpu ns, wall ns, tokens, decode only), as vllm_engine.StepSwitch records them
    samples = [(False, 10, 11, 64, True), (True, 12, 13, 64, True),    # a pair
               (True, 20, 21, 64, False), (False, 9, 9, 64, True),     # a prefill: left out
               (True, 14, 15, 63, True), (False, 10, 10, 64, True),    # unlike tokens: left out
               (False, 10, 12, 8, True), (True, 11, 13, 8, True),      # a pair
               (True, 1, 1, 8, True)]                                  # no partner
    assert bench_engines.pair_steps(samples) == [
        {"cpu_traced": 12, "cpu_untraced": 10, "wall_traced": 13, "wall_untraced": 11, "tokens_traced": 64,
         "tokens_untraced": 64},
        {"cpu_traced": 11, "cpu_untraced": 10, "wall_traced": 13, "wall_untraced": 12, "tokens_traced": 8,
         "tokens_untraced": 8}]


def test_sglang_switch_lines_pair_decode_iterations_of_the_same_batch_size() -> None:
    lines = [line.split() for line in """0 100 110 DECODE 8
E 0.5
1 120 130 DECODE 8
1 500 500 EXTEND 8
0 90 90 DECODE 8
0 100 100 DECODE 7
1 110 110 DECODE 8
1 130 140 DECODE 6
0 100 120 DECODE 6
0 5 5 IDLE 0
E 0.75 40 1""".splitlines()]
    result = bench_engines.switch_pairs(lines)
    assert result["frames"] == (40, 1)  # the last E line's frames in C and with the pickler
    assert result["pairs"] == [
        {"cpu_traced": 120, "cpu_untraced": 100, "wall_traced": 130, "wall_untraced": 110, "tokens_traced": 8,
         "tokens_untraced": 8},
        {"cpu_traced": 130, "cpu_untraced": 100, "wall_traced": 140, "wall_untraced": 120, "tokens_traced": 6,
         "tokens_untraced": 6}]
    assert result["steps"] == 9 and result["traced_steps"] == 4 and result["exporter_thread_cpu_s"] == 0.25
    assert "threads_cpu_s" not in result  # lines from before the threads' CPU was written


def test_sglang_switch_lines_give_every_sched_trace_threads_cpu_between_the_first_and_last_e_lines() -> None:
    lines = [line.split() for line in ["E 0.5 0 0 1.5", "0 100 110 DECODE 8", "1 120 130 DECODE 8",
                                       "E 0.75 10 0 2.25"]]
    result = bench_engines.switch_pairs(lines)
    assert result["exporter_thread_cpu_s"] == 0.25 and result["threads_cpu_s"] == 0.75


def _steps_with_frames(paid_per_us: float) -> list:
    """Decode steps of 1,000 us wall (untraced) and 1,010 us (traced) taking turns; every 20th
    holds 200 us of sched-trace's threads' CPU and takes ``paid_per_us`` us longer per us of it."""
    steps = []
    for i in range(400):
        traced = i % 2 == 1
        ours = 200_000 if i % 20 == 10 else (1_000 if i % 7 == 0 else 0)  # a reply read now and then: quiet
        wall = 1_000_000 + (10_000 if traced else 0) + (int(paid_per_us * ours) if ours >= 50_000 else 0)
        steps.append((traced, wall, wall, 8, True, ours))
    return steps


@pytest.mark.parametrize("paid", [0.5, 1.0, 1.6])
def test_frame_stall_is_what_the_steps_that_held_a_frame_paid_per_microsecond_of_it(paid: float) -> None:
    stall = bench_engines.frame_stall(_steps_with_frames(paid))
    assert stall["steps"] == 20 and stall["share"] == approx(paid) and stall["threads_us"] == approx(200)
    assert stall["low"] == approx(paid) and stall["high"] == approx(paid)  # every frame step paid the same
    assert bench_engines.frame_stall([s[:5] for s in _steps_with_frames(paid)]) is None  # runs from before


def test_the_throughput_charge_is_the_threads_cpu_times_what_a_frame_step_paid_when_that_is_more() -> None:
    for paid, factor in ((1.6, 1.6), (0.5, 1.0)):  # never less than the threads' CPU itself
        samples = _steps_with_frames(paid)
        result = {"pairs": bench_engines.pair_steps(samples), "samples": samples, "traced_steps": 200,
                  "exporter_thread_cpu_s": 0.001, "threads_cpu_s": 0.002}  # 10 us per traced step
        rows = {r["figure"]: r for r in bench_engines.interleaved_rows({8: result}, "vLLM")}
        stall = rows["vLLM engine-thread wall clock paid per microsecond of sched-trace's threads' CPU in its "
                     "step, batch 8"]
        assert stall["ratio"] == approx(paid)
        speed = rows["vLLM throughput, default level vs untraced, step-interleaved, batch 8"]
        pairs = result["pairs"]
        expected = sorted(p["wall_untraced"] / (p["wall_traced"] + 10_000 * factor) for p in pairs)
        assert speed["ratio"] == approx(statistics.median(expected))
        assert (f"times {factor:.2f}" in speed["note"]) == (factor > 1.0)


def test_sglang_switch_lines_carry_the_threads_cpu_of_each_iteration() -> None:
    lines = [line.split() for line in ["0 100 110 DECODE 8 0", "1 120 130 DECODE 8 70000", "0 5 5 IDLE 0 3"]]
    result = bench_engines.switch_pairs(lines)
    assert result["samples"] == [(False, 100, 110, 8, True, 0), (True, 120, 130, 8, True, 70000),
                                 (False, 5, 5, 0, False, 3)]


def test_interleaved_rows_name_the_level_the_traced_steps_ran_at() -> None:
    samples = _steps_with_frames(1.0)
    result = {"pairs": bench_engines.pair_steps(samples), "samples": samples, "traced_steps": 200,
              "exporter_thread_cpu_s": 0.001, "threads_cpu_s": 0.002}
    default = {r["figure"] for r in bench_engines.interleaved_rows({8: result}, "vLLM")}
    level1 = {r["figure"]: r for r in bench_engines.interleaved_rows({8: {**result, "level": 1}}, "vLLM")}
    assert "vLLM throughput, default level vs untraced, step-interleaved, batch 8" in default
    assert set(level1) == {figure.replace("default level", "level 1") for figure in default}
    assert all("at level 1, otel" in row["note"] for name, row in level1.items() if "paid per" not in name)
