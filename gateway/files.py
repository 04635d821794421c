"""Durable, private files (the few file-system moves the spool, quarantine and secret rely on),
and writing data held in pieces without joining them first."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

Chunks = Sequence[bytes | memoryview]  # one file's bytes in pieces, written without joining
_IOV_MAX = 1024  # pieces per writev (Linux's limit)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, durable: bool = True) -> None:
    """A new file, 0600, flushed to disk (unless not ``durable``); refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | Chunks) -> None:
    """Write ``data`` (one piece or several, in order) to ``fd``, however the kernel splits it."""
    write_pieces(lambda pieces: os.writev(fd, pieces), data)


def write_pieces(write: Callable[[list[bytes | memoryview]], int], data: bytes | Chunks) -> None:
    """Hand ``data`` to a scatter-gather ``write`` (writev, socket.sendmsg) until all is taken;
    ``write`` returns how many bytes it took, possibly fewer than offered."""
    pending = [data] if isinstance(data, bytes | memoryview) else list(data)
    first = 0
    while first < len(pending):
        taken = write(pending[first : first + _IOV_MAX])
        while first < len(pending) and taken >= len(pending[first]):
            taken -= len(pending[first])
            first += 1
        if taken:
            pending[first] = memoryview(pending[first])[taken:]
