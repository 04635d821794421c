"""Data held in pieces is written whole and in order, however little each system call takes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.files import write_all, write_pieces


@pytest.mark.parametrize("per_call", [1, 7, 4096, 10**9])
def test_every_byte_arrives_in_order_whatever_each_call_takes(per_call: int) -> None:
    pieces = [b"", b"head", memoryview(bytes(range(256)) * 40), b"x" * 5, b"", b"tail"]
    received = bytearray()

    def take_some(offered: list[bytes | memoryview]) -> int:
        joined = b"".join(offered)[:per_call]
        received.extend(joined)
        return len(joined)

    write_pieces(take_some, pieces)
    assert bytes(received) == b"".join(pieces)


def test_more_pieces_than_one_call_may_take(tmp_path: Path) -> None:
    pieces = [i.to_bytes(2, "big") for i in range(5000)]  # beyond writev's 1024 per call
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, pieces)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)
