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


def write_private(path: Path, data: bytes | Chunks, durable: bool = True) -> int:
    """A new file, 0600, flushed to disk (unless not ``durable``); refuses to overwrite.
    Returns its size."""
    return write_file(path, data, mode=0o600, durable=durable, exclusive=True)


def write_file(path: Path, data: bytes | Chunks, mode: int, durable: bool, exclusive: bool) -> int:
    """Write ``data`` to ``path`` (``exclusive``: only as a new file), fsynced when ``durable``;
    returns the size written. A file that exists is written over, then cut to size: it keeps
    its cached pages and its blocks, where a fresh file (or O_TRUNC) has to get new ones."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0)
    fd = os.open(path, flags, mode)
    try:
        size = write_all(fd, data)
        if not exclusive:
            os.ftruncate(fd, size)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return size


def write_all(fd: int, data: bytes | Chunks) -> int:
    """Write ``data`` (one piece or several, in order) to ``fd``, however the kernel splits it;
    returns how many bytes that was."""
    write_pieces(lambda pieces: os.writev(fd, pieces), data)
    return len(data) if isinstance(data, bytes | memoryview) else sum(len(p) for p in data)


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
