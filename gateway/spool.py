"""The durable queue of de-identified instances waiting to be forwarded.

Only de-identified data is ever written here. An instance counts as received only once its
file is durable: written to a temporary name, fsynced, renamed, and the folder fsynced. Entry
names sort in arrival order, so a restart forwards in the order instances came in.

A forwarded entry's file is kept (in the staging folder) for the next instance to be written
over: reusing a file costs a fraction of making one, whose every page the kernel must find and
whose blocks it must allocate and later discard. Its old bytes are de-identified data, all
overwritten or cut off before it holds an entry again.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.deid.elements import DEFAULT_ENCODINGS, PREAMBLE, read_meta, value_text
from gateway.errors import MalformedInstance, StateError
from gateway.files import Chunks, fsync_dir, write_file, write_private

SUFFIX = ".dcm"
REUSABLE_FILES = 64  # forwarded files kept to be written over


@dataclass(frozen=True)
class SpoolEntry:
    id: str
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    created: float  # seconds since the epoch
    sop_instance_uid: str = ""  # the de-identified one (for logs)

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.created)

    def dataset(self) -> memoryview:
        """The data set as it is to be sent: the file's bytes after its file meta group, mapped
        read-only (no copy in memory, however large; unmapped when the last view is gone).
        OSError if the file cannot be read, MalformedInstance if it is not a Part-10 file."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size < PREAMBLE + 4:
                raise MalformedInstance("not a Part-10 file (shorter than a preamble)")
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return part10_dataset(mapped)


MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE, TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010


def file_meta_values(path: Path) -> dict[int, str]:
    """A Part-10 file's file meta values as text, by tag, read through a map of the file (only
    its first pages are touched); MalformedInstance if it is not a Part-10 file, ValueError if it
    is empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        with memoryview(mapped) as view:
            if len(view) < PREAMBLE + 4 or view[PREAMBLE : PREAMBLE + 4] != b"DICM":
                raise MalformedInstance("not a Part-10 file (no DICM after the preamble)")
            meta, _ = read_meta(view, PREAMBLE + 4)
            return {e.tag: value_text(view, e, DEFAULT_ENCODINGS).strip() for e in meta}
    finally:
        mapped.close()


def part10_dataset(data: bytes | mmap.mmap) -> memoryview:
    """What follows the preamble, ``DICM`` and the file meta group of a Part-10 file; a view,
    not a copy. The group's elements are walked when its length (0002,0000) is missing or
    wrong."""
    if len(data) < PREAMBLE + 4 or data[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise MalformedInstance("not a Part-10 file (no DICM after the preamble)")
    view = memoryview(data)
    meta, position = read_meta(view, PREAMBLE + 4)
    if not meta:
        raise MalformedInstance("the file meta group is missing")
    return view[position:]


@dataclass
class StagedEntry:
    """A spool file written and synced but not yet an entry (see ``Spool.stage``)."""

    spool: Spool
    temp: Path
    entry: SpoolEntry

    @property
    def id(self) -> str:
        return self.entry.id

    def publish(self) -> SpoolEntry:
        """Now an entry: durable where the forwarder (and a restart) finds it."""
        self.spool._publish(self.temp, self.entry)
        return self.entry

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


class Spool:
    def __init__(self, root: Path, recycle: Callable[[Path], None] | None = None) -> None:
        """Only names the folders: reading (status) must not change a spool a gateway uses.
        Files of removed entries go to ``recycle`` (the process that writes entries), or are
        kept here for reuse."""
        self.root = root
        self.incoming = root / "incoming"  # whole, durable entries
        self.staging = root / "tmp"  # partial writes
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._reusable: deque[Path] = deque()  # in staging, once forwarded
        self._pid = os.getpid()
        self._incoming_fd: int | None = None  # the owner's, kept open to fsync the folder
        self._recycle = recycle or self.reuse

    def prepare(self, owner: bool = False) -> Spool:
        """Create the folders; the ``owner`` (the serving gateway, at start) also drops partial
        writes left by a crash: they were never acknowledged."""
        try:
            for folder in (self.root, self.incoming, self.staging):
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if owner:
                for leftover in self.staging.iterdir():
                    leftover.unlink()
                if self._incoming_fd is None:
                    self._incoming_fd = os.open(self.incoming, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StateError(f"cannot use the spool folder {self.root} ({exc.strerror})") from exc
        return self

    def close(self) -> None:
        """Let go of the folder (the owner, when it stops serving)."""
        fd, self._incoming_fd = self._incoming_fd, None
        if fd is not None:
            os.close(fd)

    def _new_id(self) -> str:
        with self._lock:
            return f"{time.time_ns():020d}-{self._pid}-{next(self._counter):06d}"

    def put(
        self, data: bytes | Chunks, sop_class_uid: str, transfer_syntax_uid: str,
        sop_instance_uid: str = ""
    ) -> SpoolEntry:
        """Store durably; returns only when the entry survives a crash."""
        return self.stage(data, sop_class_uid, transfer_syntax_uid, sop_instance_uid).publish()

    def stage(
        self, data: bytes | Chunks, sop_class_uid: str, transfer_syntax_uid: str,
        sop_instance_uid: str = ""
    ) -> StagedEntry:
        """Write durably under a name the forwarder never looks at; ``publish`` makes it an
        entry, ``discard`` drops it (what the sender was answered a failure for must never be
        sent on)."""
        entry_id = self._new_id()
        temp = self._take_reusable()
        try:
            if temp is None:
                temp = self.staging / f"{entry_id}{SUFFIX}"
                size = write_private(temp, data)
            else:
                size = write_file(temp, data, mode=0o600, durable=True, exclusive=False)
        except OSError as exc:
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise StateError(f"cannot write to the spool ({exc.strerror})") from exc
        entry = SpoolEntry(entry_id, self.incoming / f"{entry_id}{SUFFIX}", sop_class_uid,
                           transfer_syntax_uid, size, time.time(), sop_instance_uid)
        return StagedEntry(self, temp, entry)

    def _publish(self, temp: Path, entry: SpoolEntry) -> None:
        try:
            os.rename(temp, entry.path)
            if self._incoming_fd is None:
                fsync_dir(self.incoming)
            else:
                os.fsync(self._incoming_fd)
        except OSError as exc:
            for path in (temp, entry.path):  # renamed but not synced: not an entry either
                with contextlib.suppress(OSError):
                    path.unlink()
            raise StateError(f"cannot write to the spool ({exc.strerror})") from exc

    def entries(self) -> list[SpoolEntry]:
        """Every durable entry, oldest first (read at start-up and by status)."""
        found = []
        for path in sorted(self.incoming.glob(f"*{SUFFIX}")):
            entry = self.load(path)
            if entry is not None:
                found.append(entry)
        return found

    def load(self, path: Path) -> SpoolEntry | None:
        """The entry of a spool file; None if it is gone or not a Part-10 file."""
        try:
            meta = file_meta_values(path)
            stat = path.stat()
        except (OSError, ValueError, MalformedInstance):
            return None
        return SpoolEntry(
            id=path.name[: -len(SUFFIX)],
            path=path,
            sop_class_uid=meta.get(MEDIA_SOP_CLASS, ""),
            transfer_syntax_uid=meta.get(TRANSFER_SYNTAX, ""),
            size=stat.st_size,
            created=stat.st_mtime,
            sop_instance_uid=meta.get(MEDIA_SOP_INSTANCE, ""),
        )

    def ids(self) -> list[str]:
        if not self.incoming.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.incoming.glob(f"*{SUFFIX}"))

    def _take_reusable(self) -> Path | None:
        with self._lock:
            return self._reusable.popleft() if self._reusable else None

    def remove(self, entry_id: str) -> None:
        """The entry is done with: its file leaves the queue, to be written over."""
        spare = self.staging / f"reuse-{self._pid}-{next(self._counter):06d}{SUFFIX}"
        try:
            os.rename(self.incoming / f"{entry_id}{SUFFIX}", spare)
        except FileNotFoundError:
            return
        self._recycle(spare)

    def reuse(self, spare: Path) -> None:
        """Keep ``spare`` (in staging, no longer an entry) for the next entry, or delete it if
        enough are kept."""
        with self._lock:
            if len(self._reusable) < REUSABLE_FILES:
                self._reusable.append(spare)
                return
        spare.unlink(missing_ok=True)
