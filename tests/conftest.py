"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netpeers import Peers

from gateway import logs


@pytest.fixture(autouse=True)
def _logging_reset() -> Iterator[None]:
    """Commands run in-process configure logging for the process; undo it after each test."""
    yield
    logs.reset()


@pytest.fixture()
def peers(tmp_path: Path) -> Iterator[Peers]:
    """Archives, gateways and senders started by one test, all stopped when it ends."""
    p = Peers(tmp_path)
    try:
        yield p
    finally:
        p.close()
