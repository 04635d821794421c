"""Durable, private files: the few file-system moves the spool, quarantine and secret rely on."""

from __future__ import annotations

import os
from collections.abc import Sequence
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


def write_private(path: Path, data: bytes) -> None:
    """A new file, 0600, flushed to disk; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_all(fd: int, data: bytes | Chunks) -> None:
    """Write ``data`` (one piece or several, in order) to ``fd``, however the kernel splits it."""
    pending = [data] if isinstance(data, bytes | memoryview) else list(data)
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        while pending and written >= len(pending[0]):
            written -= len(pending.pop(0))
        if written:
            pending[0] = memoryview(pending[0])[written:]
