from __future__ import annotations

from typing import Iterator

import pytest

from .receivers import FaultyReceiver


@pytest.fixture
def receiver() -> Iterator[FaultyReceiver]:
    """A real OTLP/HTTP receiver on 127.0.0.1 (answers 200 until told otherwise)."""
    server = FaultyReceiver().start()
    yield server
    server.released.set()
    server.stop()
