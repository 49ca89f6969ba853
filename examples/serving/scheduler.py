"""One scheduler process per PP rank, shaped like SGLang's ``Scheduler.event_loop_pp``.

Every rank keeps the same scheduling state (waiting queue, running batch per
micro-batch slot) and makes the same decisions, because the first rank forwards
each step's new requests down the pipeline. A step for micro-batch ``mb_id``:

1. ``recv_requests`` (client queue on rank 0, the previous rank elsewhere) and
   ``process_input_requests``;
2. ``get_next_batch_to_run``: a prefill batch of waiting requests if any fit,
   else the slot's running decode batch (continuous batching);
3. ``recv_proxy_tensors`` (hidden states from the previous rank), ``run_batch``
   on this rank's layers, then ``send_proxy_tensors`` to the next rank, or, on the
   last rank, ``send_pp_outputs`` (the sampled tokens) round to rank 0;
4. ``recv_pp_outputs`` for the *next* micro-batch (it has been through every
   rank by now), pass them on, and ``process_batch_result``.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from .model import ModelConfig, PPStageModel
from .pp_group import TAG_OUTPUTS, TAG_PROXY, TAG_REQS, PPGroup
from .schedule_batch import ForwardMode, GenerationBatchResult, Req, ScheduleBatch


@dataclass(frozen=True)
class ServerArgs:
    pp_size: int = 2
    max_running_requests: int = 16  # per micro-batch slot
    max_prefill_tokens: int = 1024
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass(frozen=True)
class ShutdownReq:
    """Sent by the client after its last request: finish what is queued, then exit."""


@dataclass(frozen=True)
class SchedulerStats:
    """Sent by every rank when its event loop ends (engine-level accounting)."""

    pp_rank: int
    forward_ct: int
    loop_cpu_s: float  # CPU time of the scheduler thread inside the event loop
    loop_wall_s: float


class Scheduler:
    def __init__(self, server_args: ServerArgs, pp_rank: int, recv_from_client: Any, send_to_client: Any) -> None:
        self.server_args = server_args
        self.pp_rank, self.pp_size = pp_rank, server_args.pp_size
        self.tp_rank, self.dp_rank = 0, 0
        self.pp_group = PPGroup(pp_rank, self.pp_size)
        self.model = PPStageModel(server_args.model, pp_rank, self.pp_size).eval()
        self.hidden_size = server_args.model.hidden_size
        self.recv_from_client, self.send_to_client = recv_from_client, send_to_client
        self.waiting_queue: list[Req] = []
        self.running_mbs = [ScheduleBatch([], ForwardMode.DECODE, mb_id) for mb_id in range(self.pp_size)]
        self.running_batch = self.running_mbs[0]
        self.mbs: list[Optional[ScheduleBatch]] = [None] * self.pp_size  # launched, outputs pending
        self.last_mbs: list[Optional[ScheduleBatch]] = [None] * self.pp_size  # processed, to merge
        self.last_batch: Optional[ScheduleBatch] = None
        self.num_unfinished = 0
        self.stopping = False
        self.forward_ct = 0
        self._local_outputs: collections.deque = collections.deque()  # pp_size == 1: no ring

    # --- the event loop ------------------------------------------------------------

    @torch.no_grad()
    def event_loop_pp(self) -> None:
        """Interleave ``pp_size`` micro-batches so every rank has work each step."""
        cpu, wall = time.thread_time(), time.perf_counter()
        while not self.should_exit():
            for mb_id in range(self.pp_size):
                self.event_loop_pp_step(mb_id)
        self.pp_group.wait_sends()
        self.send_to_client.put(SchedulerStats(
            self.pp_rank, self.forward_ct, time.thread_time() - cpu, time.perf_counter() - wall))

    def should_exit(self) -> bool:
        # Decided from replicated state only, so every rank leaves after the same step.
        return self.stopping and self.num_unfinished == 0 and all(mb is None for mb in self.mbs)

    def event_loop_pp_step(self, mb_id: int) -> None:
        self.running_batch = self.running_mbs[mb_id]
        self.last_batch, self.last_mbs[mb_id] = self.last_mbs[mb_id], None
        recv_reqs = self.recv_requests()
        if not self.pp_group.is_last_rank:
            self.send_pyobj_to_next_stage(recv_reqs)
        self.process_input_requests(recv_reqs)
        batch = self.get_next_batch_to_run()
        self.running_mbs[mb_id] = self.running_batch
        self.mbs[mb_id] = batch
        if batch is not None:
            batch.mb_id = mb_id
            proxy = None if self.pp_group.is_first_rank else self.recv_proxy_tensors(batch)
            result = self.run_batch(batch, proxy)
            if self.pp_group.is_last_rank:
                self.send_pp_outputs(batch, result.next_token_ids)
            else:
                self.send_proxy_tensors(batch, result.pp_hidden_states)
        # The micro-batch launched pp_size - 1 steps ago has been through every rank.
        next_mb_id = (mb_id + 1) % self.pp_size
        done = self.mbs[next_mb_id]
        if done is not None:
            next_token_ids = self.recv_pp_outputs(done)
            if not self.pp_group.is_last_rank:
                self.send_pp_outputs(done, next_token_ids)
            self.process_batch_result(done, GenerationBatchResult(next_token_ids=next_token_ids))
            self.mbs[next_mb_id] = None
            self.last_mbs[next_mb_id] = done

    # --- requests ----------------------------------------------------------------

    def recv_requests(self) -> list[Any]:
        if not self.pp_group.is_first_rank:
            return self.recv_pyobj_from_prev_stage()
        reqs: list[Any] = []
        idle = self.num_unfinished == 0 and all(mb is None for mb in self.mbs) and not self.stopping
        while True:
            try:
                # Block only when there is nothing else to do (the timeout keeps idle steps rare).
                item = self.recv_from_client.get(timeout=0.5) if idle and not reqs else self.recv_from_client.get_nowait()
            except queue.Empty:
                return reqs
            reqs.extend(item if isinstance(item, list) else [item])

    def process_input_requests(self, recv_reqs: list[Any]) -> None:
        for req in recv_reqs:
            if isinstance(req, ShutdownReq):
                self.stopping = True
            else:
                self.waiting_queue.append(req)
                self.num_unfinished += 1

    # --- scheduling ------------------------------------------------------------------

    def get_next_batch_to_run(self) -> Optional[ScheduleBatch]:
        """Prefill newly arrived requests first; otherwise decode the running batch."""
        if self.last_batch is not None and self.last_batch.forward_mode is ForwardMode.EXTEND:
            self.last_batch.filter_batch()
            if not self.last_batch.is_empty():
                self.running_batch.merge_batch(self.last_batch)
        new_batch = self.get_new_batch_prefill()
        if new_batch is not None:
            return new_batch
        self.update_running_batch()
        return None if self.running_batch.is_empty() else self.running_batch

    def get_new_batch_prefill(self) -> Optional[ScheduleBatch]:
        budget = self.server_args.max_prefill_tokens
        room = self.server_args.max_running_requests - self.running_batch.batch_size()
        admitted: list[Req] = []
        while self.waiting_queue and len(admitted) < room:
            req = self.waiting_queue[0]
            if admitted and len(req.input_ids) > budget:
                break
            admitted.append(self.waiting_queue.pop(0))
            budget -= len(req.input_ids)
        if not admitted:
            return None
        return ScheduleBatch(admitted, ForwardMode.EXTEND, self.running_batch.mb_id)

    def update_running_batch(self) -> None:
        self.running_batch.filter_batch()
        if not self.running_batch.is_empty():
            self.running_batch.forward_mode = ForwardMode.DECODE

    # --- model -------------------------------------------------------------------------

    def run_batch(self, batch: ScheduleBatch, pp_proxy_tensors: Optional[torch.Tensor] = None) -> GenerationBatchResult:
        """One forward pass of this rank's layers; the last rank also samples."""
        self.forward_ct += 1
        input_ids, positions = batch.input_tensors()
        hidden = self.model(input_ids, positions, pp_proxy_tensors)
        if not self.pp_group.is_last_rank:
            return GenerationBatchResult(pp_hidden_states=hidden)
        return GenerationBatchResult(next_token_ids=self.model.sample(hidden, batch.last_token_index()))

    def process_batch_result(self, batch: ScheduleBatch, result: GenerationBatchResult) -> None:
        assert result.next_token_ids is not None
        finished = []
        for req, token_id in zip(batch.reqs, result.next_token_ids.tolist()):
            req.output_ids.append(token_id)
            if req.finished:
                finished.append(req)
        self.num_unfinished -= len(finished)
        if finished and self.pp_group.is_first_rank:
            self.stream_output(finished)

    def stream_output(self, finished: list[Req]) -> None:
        self.send_to_client.put([(req.rid, req.output_ids) for req in finished])

    # --- point-to-point between PP ranks ------------------------------------------------

    def send_pyobj_to_next_stage(self, data: Any) -> None:
        self.pp_group.send_pyobj(data, self.pp_group.next_rank, TAG_REQS)

    def recv_pyobj_from_prev_stage(self) -> Any:
        return self.pp_group.recv_pyobj(self.pp_group.prev_rank, TAG_REQS)

    def send_proxy_tensors(self, batch: ScheduleBatch, hidden_states: torch.Tensor) -> None:
        self.pp_group.send_tensor(hidden_states, self.pp_group.next_rank, TAG_PROXY)

    def recv_proxy_tensors(self, batch: ScheduleBatch) -> torch.Tensor:
        shape = (batch.num_tokens(), self.hidden_size)
        return self.pp_group.recv_tensor(shape, torch.float32, self.pp_group.prev_rank, TAG_PROXY)

    def send_pp_outputs(self, batch: ScheduleBatch, next_token_ids: torch.Tensor) -> None:
        """Last rank: round to rank 0; other ranks: carry on towards the last rank."""
        if self.pp_size == 1:
            self._local_outputs.append(next_token_ids)
            return
        self.pp_group.send_tensor(next_token_ids, self.pp_group.next_rank, TAG_OUTPUTS)

    def recv_pp_outputs(self, batch: ScheduleBatch) -> torch.Tensor:
        if self.pp_size == 1:
            return self._local_outputs.popleft()
        return self.pp_group.recv_tensor((batch.batch_size(),), torch.long, self.pp_group.prev_rank, TAG_OUTPUTS)


def run_scheduler_process(
    server_args: ServerArgs, pp_rank: int, init_method: str, recv_from_client: Any, send_to_client: Any
) -> None:
    """Entry point of a scheduler process (started with the ``spawn`` method)."""
    threading.current_thread().name = "Scheduler"
    torch.set_num_threads(1)  # one core per rank, as one GPU per rank would be
    dist.init_process_group("gloo", init_method=init_method, rank=pp_rank, world_size=server_args.pp_size)
    try:
        scheduler = Scheduler(server_args, pp_rank, recv_from_client, send_to_client)
        dist.barrier()
        if pp_rank == 0:
            send_to_client.put("ready")
        scheduler.event_loop_pp()
        dist.barrier()
    finally:
        dist.destroy_process_group()
