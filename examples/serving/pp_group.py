"""Point-to-point messages between PP ranks over a torch.distributed gloo group.

Sends are asynchronous (``isend``) as NCCL sends are in a real engine, so only
receives wait; each kind of message has its own tag and arrives in order.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.distributed as dist

TAG_REQS = 1
TAG_PROXY = 2
TAG_OUTPUTS = 3


MAX_SENDS_IN_FLIGHT = 16


class PPGroup:
    """This rank's view of the pipeline: who is before it, who after."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.prev_rank = (rank - 1) % world_size
        self.next_rank = (rank + 1) % world_size
        self.is_first_rank = rank == 0
        self.is_last_rank = rank == world_size - 1
        self._pending: list[tuple[Any, torch.Tensor]] = []

    def send_tensor(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        tensor = tensor.contiguous()
        work = dist.isend(tensor, dst, tag=tag)
        # Keep the tensor alive until gloo has sent it. Gloo's send work reports
        # is_completed() only once wait() was called, so polling it never shrinks the
        # list: the list grew every step and scanning it slowed the engine down round
        # after round. Wait on the oldest sends instead; the peer consumes in order
        # and is at most a few steps behind, so they are long done.
        self._pending.append((work, tensor))
        while len(self._pending) > MAX_SENDS_IN_FLIGHT:
            self._pending.pop(0)[0].wait()

    def recv_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype)
        dist.recv(tensor, src, tag=tag)
        return tensor

    def send_pyobj(self, obj: Any, dst: int, tag: int = TAG_REQS) -> None:
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        self.send_tensor(torch.tensor([payload.numel()], dtype=torch.long), dst, tag)
        self.send_tensor(payload, dst, tag)

    def recv_pyobj(self, src: int, tag: int = TAG_REQS) -> Any:
        size = int(self.recv_tensor((1,), torch.long, src, tag).item())
        payload = self.recv_tensor((size,), torch.uint8, src, tag)
        return pickle.loads(payload.numpy().tobytes())

    def wait_sends(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()
