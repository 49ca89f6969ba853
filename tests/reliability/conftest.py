from __future__ import annotations

from typing import Iterator

import pytest

from sched_trace.testing import OtlpReceiver


class Receiver(OtlpReceiver):
    def microbatches(self, name: str = "run_batch_cpu") -> list[int]:
        """``pp_mb_id`` of every span named ``name`` received, in arrival order."""
        return self.attribute_values(name, "pp_mb_id")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real OTLP/HTTP receiver on 127.0.0.1 (answers 200 until told otherwise)."""
    server = Receiver("http").start()
    yield server
    server.stop()
