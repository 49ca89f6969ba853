"""The trace contracts this project holds the shipped engine profiles to, for the engine tests.

Built from the profiles themselves (:meth:`Contract.from_profile`), so a stage added to a
profile is expected at once, and a target an engine renamed fails with the stage's name and
rank. tests/vllm and tests/sglang import these next to their own checks::

    from tests.contracts.engines import sglang_contract, vllm_contract

    trace = vllm_contract().check(Trace.from_capture(work / "capture"))
"""

from __future__ import annotations

from sched_trace.contracts import Contract


def vllm_contract() -> Contract:
    """A vLLM V1 engine traced with the ``vllm`` profile (in-process or in EngineCore)."""
    return (Contract.from_profile("vllm")
            .nested("schedule", inside="engine_step")
            .nested("execute_model", inside="engine_step")
            .nested("update_from_output", inside="engine_step")
            .attributes("execute_model", "batch_size", "scheduled_tokens"))


def sglang_contract(pp_size: int = 1) -> Contract:
    """An SGLang server traced with the ``sglang`` profile: one scheduler per PP rank;
    ``run_batch_cpu`` (the PP event loop's micro-batch launch) only runs with ``pp_size`` > 1,
    and ``tokenize`` runs in the HTTP server's process (the tokenizer manager), on no PP rank."""
    ranks = [f"PP{r}" for r in range(pp_size)]
    skip = ("tokenize",) if pp_size > 1 else ("tokenize", "run_batch_cpu")
    contract = (Contract.from_profile("sglang", ranks=ranks, skip=skip)
                .stages("tokenize")
                .attributes("run_batch", "batch_size", "forward_mode"))
    if pp_size > 1:
        contract.nested("run_batch", inside="run_batch_cpu").attributes("run_batch_cpu", "pp_mb_id")
    return contract
