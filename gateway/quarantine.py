"""Originals that could not be passed on, each with a JSON record of why.

Layout: ``<data_dir>/quarantine/<id>/<file>`` and ``record.json``, folders 0700 and files 0600,
written to a temporary folder first and renamed, so a record is whole or absent. ``<file>`` is
``original.dcm`` for an original; a dead letter (already de-identified) is named by its
pseudonymous SOP Instance UID, ``<uid>.dcm``; record.json names the file (``file``), and a
record without that key (older entries) means ``original.dcm``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError, InstanceError, StateError
from gateway.files import fsync_dir, write_private

ORIGINAL = "original.dcm"
RECORD = "record.json"
_FILE_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,99}\.dcm")  # e.g. a UID and ".dcm"


@dataclass(frozen=True)
class QuarantineRecord:
    id: str
    time: str
    source: str  # file path (offline) or "AE@host:port" (network)
    reason: str  # machine-readable, e.g. "leak-detected"
    error_class: str
    message: str  # names elements and classes, never values
    size: int
    context: dict[str, Any] = field(default_factory=dict)  # e.g. {"destination": "out/"}
    file: str = ORIGINAL  # the instance's file in the entry's folder


    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.time)


class Quarantine:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise StateError(f"cannot create the quarantine folder ({exc.strerror})") from exc

    def put(
        self, data: bytes, source: str, error: BaseException, context: dict[str, Any] | None = None,
        durable: bool = True, file_name: str = ORIGINAL,
    ) -> QuarantineRecord:
        """Keep ``data`` with the reason taken from ``error``; ``durable``: on disk before this
        returns (not needed where the original stays where it came from, as offline);
        ``file_name``: the file's name in the entry's folder (``<uid>.dcm`` for a dead letter)."""
        if not _FILE_NAME.fullmatch(file_name) or file_name == RECORD:
            raise ValueError("a quarantine file name is letters, digits, '.', '-', '_' and '.dcm'")
        self._ensure_root()
        now = datetime.now(UTC)
        record = QuarantineRecord(
            id=f"{now:%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}",
            time=now.isoformat(),
            source=source,
            reason=error.reason if isinstance(error, InstanceError) else "error",
            error_class=type(error).__name__,
            message=str(error) if isinstance(error, GatewayError) else type(error).__name__,
            size=len(data),
            context=dict(context or {}),
            file=file_name,
        )
        staging = self.root / f".{record.id}.tmp"
        try:
            staging.mkdir(mode=0o700)
            write_private(staging / file_name, data, durable)
            write_private(staging / RECORD, json.dumps(asdict(record), indent=2).encode(), durable)
            if durable:
                fsync_dir(staging)
            staging.rename(self.root / record.id)
            if durable:
                fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StateError(f"cannot write to quarantine ({exc.strerror})") from exc
        return record

    def list(self) -> list[QuarantineRecord]:
        if not self.root.is_dir():
            return []
        records = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not (entry / RECORD).is_file():
                continue
            records.append(self._read(entry))
        return records

    def _read(self, folder: Path) -> QuarantineRecord:
        data = json.loads((folder / RECORD).read_text())
        return QuarantineRecord(**data)

    def get(self, record_id: str) -> QuarantineRecord:
        folder = self._folder(record_id)
        return self._read(folder)

    def original(self, record_id: str) -> bytes:
        """The instance kept (an original, or a dead letter's de-identified instance)."""
        return self.file_path(record_id).read_bytes()

    def file_path(self, record_id: str) -> Path:
        """Where the entry's instance is: ``original.dcm``, or ``<uid>.dcm`` for a dead letter."""
        folder = self._folder(record_id)
        name = self._read(folder).file
        if not _FILE_NAME.fullmatch(name):  # a hand-edited record must not point elsewhere
            raise StateError(f"quarantine entry {record_id}: record.json names no valid file")
        return folder / name

    def update(self, record: QuarantineRecord) -> None:
        folder = self._folder(record.id)
        temp = folder / f".{RECORD}.tmp"
        temp.unlink(missing_ok=True)
        write_private(temp, json.dumps(asdict(record), indent=2).encode())
        temp.replace(folder / RECORD)

    def remove(self, record_id: str) -> None:
        shutil.rmtree(self._folder(record_id))

    def _folder(self, record_id: str) -> Path:
        folder = self.root / record_id
        if "/" in record_id or record_id.startswith(".") or not (folder / RECORD).is_file():
            raise KeyError(record_id)
        return folder
