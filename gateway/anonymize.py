"""The offline command: de-identify every DICOM file under a folder into another folder.

Output is named by pseudonyms only: ``DST/<PatientID>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.
Files that fail go to quarantine with their reason; files that are not DICOM are counted and
skipped. Nothing that failed ever appears in DST.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway import logs
from gateway.deid.engine import Policy, Pseudonym
from gateway.deidentify import CleanInstance, deidentify_bytes
from gateway.errors import ConfigError, InstanceError, NotDicom
from gateway.quarantine import Quarantine
from gateway.state import PseudonymStore

log = logs.get_logger("anonymize")

MAP_BATCH = 200  # files whose pseudonyms are written to the map in one transaction
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]")

Progress = Callable[[int, int], None]


@dataclass
class Summary:
    files_in: int = 0
    written: int = 0
    quarantined: int = 0
    skipped: int = 0
    duplicates: int = 0  # written over an output of the same run (same SOP Instance UID)
    reasons: Counter[str] = field(default_factory=Counter)  # quarantine reasons
    skip_reasons: Counter[str] = field(default_factory=Counter)
    unhandled: Counter[int] = field(default_factory=Counter)  # tag -> files

    def as_dict(self) -> dict[str, object]:
        from pydicom.datadict import keyword_for_tag

        return {
            "files_in": self.files_in,
            "written": self.written,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "quarantine_reasons": dict(self.reasons),
            "skip_reasons": dict(self.skip_reasons),
            "unhandled_attributes": [
                {"tag": f"({t >> 16:04X},{t & 0xFFFF:04X})", "keyword": keyword_for_tag(t),
                 "files": n}
                for t, n in sorted(self.unhandled.items())
            ],
        }


def iter_files(src: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def output_path(dst: Path, clean: CleanInstance) -> Path:
    ds = clean.result.dataset

    def part(value: object) -> str:
        text = _UNSAFE_PATH_CHARS.sub("_", str(value or "").strip())
        return text or "unknown"

    return (
        dst / part(ds.get("PatientID")) / part(ds.get("StudyInstanceUID"))
        / part(ds.get("SeriesInstanceUID")) / f"{part(clean.sop_instance_uid)}.dcm"
    )


def write_atomically(path: Path, data: bytes, durable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    temp.replace(path)


def check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise ConfigError(f"SRC: {src} is not a folder")
    source, target = src.resolve(), dst.resolve()
    if source == target or source in target.parents or target in source.parents:
        raise ConfigError("SRC and DST must not contain each other; choose a separate DST")


class Anonymizer:
    """Runs files through the de-identify stage; records pseudonyms and quarantines failures."""

    def __init__(
        self, policy: Policy, secret: bytes, store: PseudonymStore, quarantine: Quarantine
    ) -> None:
        self.policy = policy
        self.secret = secret
        self.store = store
        self.quarantine = quarantine
        self._pending: list[Pseudonym] = []
        self._pending_files = 0
        self._written: set[Path] = set()

    def process(self, data: bytes, source: str, dst: Path, summary: Summary) -> bool:
        """One file; True when a clean copy was written under ``dst``."""
        try:
            clean = deidentify_bytes(data, self.policy, self.secret)
        except NotDicom as exc:
            summary.skipped += 1
            summary.skip_reasons[str(exc)] += 1
            return False
        except InstanceError as exc:
            # Absolute: `quarantine release` may run from another working directory.
            record = self.quarantine.put(data, source, exc, {"destination": str(dst.resolve())})
            log.warning("quarantined", quarantine_id=record.id, reason=exc.reason,
                        error=type(exc).__name__)
            summary.quarantined += 1
            summary.reasons[exc.reason] += 1
            return False
        target = output_path(dst, clean)
        if target in self._written:
            summary.duplicates += 1  # e.g. one instance in two transfer syntaxes: the last wins
        self._written.add(target)
        write_atomically(target, clean.data)
        log.debug("de-identified", sop_instance_uid=clean.sop_instance_uid, size=len(clean.data))
        summary.written += 1
        summary.unhandled.update(clean.result.unhandled.keys())
        self._pending.extend(clean.result.pseudonyms)
        self._pending_files += 1
        if self._pending_files >= MAP_BATCH:
            self.flush()
        return True

    def flush(self) -> None:
        self.store.record(self._pending)
        self._pending = []
        self._pending_files = 0


def anonymize_tree(
    src: Path, dst: Path, anonymizer: Anonymizer, progress: Progress | None = None
) -> Summary:
    check_folders(src, dst)
    files = list(iter_files(src))
    summary = Summary(files_in=len(files))
    for done, path in enumerate(files, start=1):
        try:
            data = path.read_bytes()
        except OSError as exc:
            summary.skipped += 1
            summary.skip_reasons[f"unreadable file ({exc.strerror})"] += 1
        else:
            anonymizer.process(data, str(path), dst, summary)
        if progress is not None:
            progress(done, len(files))
    anonymizer.flush()
    os.sync()  # one flush of everything written, rather than an fsync per file
    return summary
