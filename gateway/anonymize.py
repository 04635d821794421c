"""The offline command: de-identify every DICOM file under a folder into another folder.

Output is named by pseudonyms only: ``DST/<PatientID>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.
Files that fail go to quarantine with their reason; files that are not DICOM are counted and
skipped. Nothing that failed ever appears in DST, and no output of a run is replaced by a
different one of the same run (another instance with the same SOP Instance UID goes to
quarantine instead).
"""

from __future__ import annotations

import contextlib
import filecmp
import itertools
import multiprocessing
import os
import re
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import logs
from gateway.deid.engine import PATIENT_ID, SERIES_INSTANCE_UID, STUDY_INSTANCE_UID, Policy, Pseudonym
from gateway.deidentify import CleanInstance, deidentify_bytes
from gateway.errors import (
    ConfigError,
    ConflictingInstance,
    InstanceError,
    NotDicom,
    unexpected_errors_as_malformed,
)
from gateway.files import Chunks, write_file
from gateway.pixels.policy import PixelPolicy
from gateway.quarantine import Quarantine

if TYPE_CHECKING:
    from gateway.state import PseudonymStore

log = logs.get_logger("anonymize")

MAP_BATCH = 200  # files whose pseudonyms are written to the map in one transaction
WORKER_CHUNK = 16  # files handed to a worker process at a time
INTERRUPT_CHECK_SECONDS = 0.25  # how long a wait for a worker may miss a remembered Ctrl-C
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]")

Progress = Callable[[int, int], None]


@dataclass
class Summary:
    files_in: int = 0
    written: int = 0
    quarantined: int = 0
    skipped: int = 0
    duplicates: int = 0  # the same output again in this run (same instance, identical bytes)
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


def relative_path(clean: CleanInstance) -> tuple[str, str, str, str]:
    """Pseudonymous PatientID / StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID.dcm."""
    result = clean.result

    def part(value: str) -> str:
        text = _UNSAFE_PATH_CHARS.sub("_", value.strip())
        return text or "unknown"

    return (part(result.fact(PATIENT_ID)), part(result.fact(STUDY_INSTANCE_UID)),
            part(result.fact(SERIES_INSTANCE_UID)), f"{part(clean.sop_instance_uid)}.dcm")


def output_path(dst: Path, clean: CleanInstance) -> Path:
    return dst.joinpath(*relative_path(clean))


def write_atomically(path: Path, data: bytes | Chunks, durable: bool = False) -> None:
    temp = write_temporary(path, data, durable)
    try:
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_temporary(path: Path, data: bytes | Chunks, durable: bool = False) -> Path:
    """Write ``data`` beside ``path`` under a temporary name (renamed into place later)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{next(_temp_numbers)}.tmp")
    try:
        try:
            write_file(temp, data, mode=0o644, durable=durable, exclusive=False)
        except FileNotFoundError:  # a new folder (most files go to one made for an earlier one)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(temp, data, mode=0o644, durable=durable, exclusive=False)
    except BaseException:  # a full disk, Ctrl-C: no partial file left behind
        temp.unlink(missing_ok=True)
        raise
    return temp


_temp_numbers = itertools.count()


def check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise ConfigError(f"SRC: {src} is not a folder")
    source, target = src.resolve(), dst.resolve()
    if source == target or source in target.parents or target in source.parents:
        raise ConfigError("SRC and DST must not contain each other; choose a separate DST")


@dataclass(frozen=True)
class Cleaned:
    """What a worker hands back for one de-identified file, already written under a temporary
    name beside its destination (light to pass between processes)."""

    relative: tuple[str, str, str, str]  # patient, study, series, instance file name
    temporary: str
    size: int
    pseudonyms: list[Pseudonym]
    unhandled: tuple[int, ...]


Outcome = Cleaned | NotDicom | InstanceError | OSError


Edit = Callable[[CleanInstance, bytes], CleanInstance]  # a profile's edits (gateway.profiles)


def clean_file(path: Path, dst: Path, policy: Policy, secret: bytes,
               pixels: PixelPolicy | None = None, edit: Edit | None = None) -> Outcome:
    """Read, de-identify and write one file (to a temporary name); failures come back as values,
    in the order of the files: whatever one file does, the others are still done (anything
    unexpected comes back as MalformedInstance, to quarantine; MemoryError still stops the run)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return exc
    try:
        with unexpected_errors_as_malformed():
            clean = deidentify_bytes(data, policy, secret, pixels)
            if edit is not None:
                clean = edit(clean, data)
            relative = relative_path(clean)
    except (NotDicom, InstanceError) as exc:
        return exc
    try:
        temporary = write_temporary(dst.joinpath(*relative), clean.chunks)
    except OSError as exc:
        return exc
    return Cleaned(relative, str(temporary), clean.size, clean.result.pseudonyms,
                   tuple(clean.result.unhandled))


_worker_setup: tuple[Path, Policy, bytes, PixelPolicy | None, Edit | None] | None = None


def _start_worker(dst: Path, policy: Policy, secret: bytes, pixels: PixelPolicy | None,
                  edit: Edit | None) -> None:
    global _worker_setup
    _worker_setup = (dst, policy, secret, pixels, edit)
    # Ctrl-C reaches every process of the terminal's group: the parent stops the workers (each
    # finishes its files, whose temporaries the parent then removes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _clean_in_worker(paths: list[Path]) -> list[Outcome]:
    assert _worker_setup is not None
    return [clean_file(path, *_worker_setup) for path in paths]


def _discard(outcomes: Iterable[Outcome], futures: Iterable[Future[list[Outcome]]]) -> None:
    """Remove the temporaries of outcomes that will not be taken: those given, and those of
    the workers' chunks that were not cancelled (waiting for the ones being worked on)."""
    cleaned = [o for o in outcomes if isinstance(o, Cleaned)]
    for future in futures:
        # Cancelled, a worker gone, or the failure being reported: no outcomes to remove.
        with contextlib.suppress(Exception):
            cleaned += [o for o in future.result() if isinstance(o, Cleaned)]
    for outcome in cleaned:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(outcome.temporary)


class Anonymizer:
    """De-identifies files (in worker processes when there are several cores), writes the clean
    copies in the order of the files, records pseudonyms and quarantines failures."""

    def __init__(
        self, policy: Policy, secret: bytes, open_store: Callable[[], PseudonymStore],
        quarantine: Quarantine, workers: int = 1, pixels: PixelPolicy | None = None,
        edit: Edit | None = None, profile: str = "",
    ) -> None:
        self.policy = policy
        self.edit = edit
        self.profile = profile  # a named profile's name (for its quarantine records)
        self.pixels = pixels
        self.secret = secret
        self.open_store = open_store
        self.store: PseudonymStore | None = None
        self.quarantine = quarantine
        self.workers = max(1, workers)
        self._pending: list[Pseudonym] = []
        self._pending_files = 0
        self._written: set[str] = set()
        self.interrupted: threading.Event | None = None  # set by Ctrl-C (see remembered_interrupt)

    def check_interrupted(self) -> None:
        if self.interrupted is not None and self.interrupted.is_set():
            raise KeyboardInterrupt

    def _chunk_result(self, future: Future[list[Outcome]]) -> list[Outcome]:
        """A worker's chunk, waited for in short steps so that a remembered Ctrl-C stops the
        wait."""
        while True:
            self.check_interrupted()
            try:
                return future.result(timeout=INTERRUPT_CHECK_SECONDS)
            except FutureTimeout:
                continue

    def outcomes(self, files: list[Path], dst: Path) -> Generator[Outcome, None, None]:
        self._written.clear()  # a new run: earlier runs' outputs may be replaced
        if self.workers == 1 or len(files) < 2 * WORKER_CHUNK:
            self.store = self.open_store()
            yield from (clean_file(path, dst, self.policy, self.secret, self.pixels, self.edit)
                        for path in files)
            return
        # fork: workers start at once with the policy already in memory. They start before the
        # map is opened, so they never hold its connection, and the parent imports the
        # database library while they work.
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker,
                                 initargs=(dst, self.policy, self.secret, self.pixels,
                                           self.edit)) as pool:
            chunks = deque(pool.submit(_clean_in_worker, files[start : start + WORKER_CHUNK])
                           for start in range(0, len(files), WORKER_CHUNK))
            current: deque[Outcome] = deque()
            try:
                self.store = self.open_store()
                while chunks:
                    current = deque(self._chunk_result(chunks[0]))
                    chunks.popleft()  # taken: its memory goes with it
                    while current:
                        yield current.popleft()
            except BaseException:
                # Stop at once (not after every file) and leave no temporaries behind.
                for future in chunks:
                    future.cancel()
                _discard(current, chunks)
                raise

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def take(self, outcome: Outcome, path: Path, dst: Path, summary: Summary) -> None:
        """Write, quarantine or skip one file's outcome."""
        if isinstance(outcome, OSError):
            summary.skipped += 1
            summary.skip_reasons[f"unreadable file ({outcome.strerror})"] += 1
        elif isinstance(outcome, NotDicom):
            summary.skipped += 1
            summary.skip_reasons[str(outcome)] += 1
        elif isinstance(outcome, InstanceError):
            self._quarantine(path, dst, outcome, summary)
        else:
            self._write(outcome, path, dst, summary)

    def _quarantine(self, path: Path, dst: Path, error: InstanceError, summary: Summary) -> None:
        try:
            original = path.read_bytes()
        except OSError as exc:  # gone or changed since it was read: nothing to keep
            self.take(exc, path, dst, summary)
            return
        # Absolute: `quarantine release` may run from another working directory.
        # Not forced to disk: the original stays in SRC, and the next run finds it again.
        context = {"destination": str(dst.resolve())}
        if self.profile:  # released again with the same profile
            context["profile"] = self.profile
        record = self.quarantine.put(original, str(path), error, context, durable=False)
        log.warning("quarantined", quarantine_id=record.id, reason=error.reason,
                    error=type(error).__name__)
        summary.quarantined += 1
        summary.reasons[error.reason] += 1

    def _write(self, cleaned: Cleaned, path: Path, dst: Path, summary: Summary) -> None:
        """Put the output in place, over an output of an earlier run (a run again, with other
        settings). A second output of this run at the same place is kept only when identical
        (a duplicate); a different one (another instance with the same SOP Instance UID, a
        header-only copy) is quarantined and the first one stays."""
        target = os.path.join(dst, *cleaned.relative)  # strings: thousands of files a second
        if target in self._written:
            same = filecmp.cmp(cleaned.temporary, target, shallow=False)
            os.unlink(cleaned.temporary)
            if not same:
                error = ConflictingInstance("another instance's output is already at its place "
                                            "(same SOP Instance UID, different content)")
                self._quarantine(path, dst, error, summary)
                return
            summary.duplicates += 1  # e.g. the same file twice in SRC
            self._pending.extend(cleaned.pseudonyms)  # seen once more
            self._pending_files += 1
        else:
            self._written.add(target)
            # Renaming over an existing file makes ext4 write the new one out at once (its
            # replace-via-rename safeguard), ~1 ms each. The originals stay where they are, so
            # the copies need no forced write-out: the system writes them in its own time.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            # Pseudonyms first: a Ctrl-C just after the rename must not leave a copy in place
            # that the map cannot trace back (one just before it maps what is not written yet:
            # harmless, the same pairs come again).
            self._pending.extend(cleaned.pseudonyms)
            self._pending_files += 1
            os.rename(cleaned.temporary, target)
        log.debug("de-identified", sop_instance_uid=cleaned.relative[3][: -len(".dcm")],
                  size=cleaned.size)
        summary.written += 1
        summary.unhandled.update(cleaned.unhandled)
        if self._pending_files >= MAP_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.store is None:
            return  # nothing was taken
        self.store.record(self._pending)
        self._pending = []
        self._pending_files = 0


@contextlib.contextmanager
def remembered_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt where it lands, as usual, and is also remembered: Python
    drops an exception raised inside a finalizer or a weakref callback (a collected database
    connection's, say), so the run checks the event between files and while it waits.

    Only in the main thread and where Ctrl-C is not ignored (a job started with ``nohup ... &``
    keeps ignoring it)."""
    interrupted = threading.Event()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield interrupted
        return

    def on_interrupt(_signum: int, _frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def anonymize_tree(
    src: Path, dst: Path, anonymizer: Anonymizer, progress: Progress | None = None
) -> Summary:
    check_folders(src, dst)
    files = list(iter_files(src))
    summary = Summary(files_in=len(files))
    with remembered_interrupt() as interrupted:
        anonymizer.interrupted = interrupted
        try:
            _anonymize_files(files, dst, anonymizer, summary, progress)
        finally:
            anonymizer.interrupted = None
    return summary


def _anonymize_files(files: list[Path], dst: Path, anonymizer: Anonymizer, summary: Summary,
                     progress: Progress | None) -> None:
    outcomes = anonymizer.outcomes(files, dst)
    try:
        for done, (path, outcome) in enumerate(zip(files, outcomes, strict=True), start=1):
            try:
                anonymizer.check_interrupted()
                anonymizer.take(outcome, path, dst, summary)
            except BaseException:
                _discard([outcome], ())  # not renamed into place: not left behind
                raise
            if progress is not None:
                progress(done, len(files))
    finally:
        outcomes.close()  # if it ended early: stops the workers, removes what they wrote
        anonymizer.flush()  # what was taken is in DST, also after Ctrl-C: its pairs are mapped
