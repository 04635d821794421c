"""Backup and restore of the gateway's state, portable between databases (SQLite, PostgreSQL).

A backup is a folder (0700, files 0600)::

    manifest.json              format and version, gateway version, when, source database
                               dialect, and for each file its rows, size and SHA-256
    map.jsonl.gz               the pseudonym map, one JSON object per line
    audit.jsonl.gz             the audit trail (look-ups, exports, backups, restores)
    counters.json              the running counts that ``status`` reports
    quarantine-records.jsonl   the records of this node's quarantine (never the originals)
    accounts.jsonl             the web console's accounts (names, roles, salted password hashes)
    secret.key                 only when asked for: the key that made the pseudonyms

Rows are streamed both ways: a map of millions of entries never sits in memory. The manifest is
written last, so a folder without one is an unfinished backup, and restore refuses it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway import __version__
from gateway.errors import StateError
from gateway.files import fsync_dir
from gateway.quarantine import RECORD
from gateway.state import (
    COUNTERS,
    PSEUDONYMS,
    AccountRow,
    AuditRow,
    _account,
    _add_counts,
    _utc,
    open_engine,
)

FORMAT = "dicom-gateway-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAP_FILE = "map.jsonl.gz"
AUDIT_FILE = "audit.jsonl.gz"
COUNTERS_FILE = "counters.json"
QUARANTINE_FILE = "quarantine-records.jsonl"
ACCOUNTS_FILE = "accounts.jsonl"
SECRET_FILE = "secret.key"
DATA_FILES = (MAP_FILE, AUDIT_FILE, COUNTERS_FILE, QUARANTINE_FILE)
OPTIONAL_FILES = (ACCOUNTS_FILE,)  # written by every backup; older backups lack it
ALL_FILES = (MANIFEST, *DATA_FILES, *OPTIONAL_FILES, SECRET_FILE)

BATCH_ROWS = 1000  # rows fetched or inserted per round trip
HASH_CHUNK = 1 << 20

AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
ACCOUNTS: Table = AccountRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    rows: dict[str, int]  # file name -> rows written
    contains_secret: bool


@dataclass(frozen=True)
class RestoreSummary:
    map_entries: int
    audit_rows: int
    counters: int
    source_dialect: str
    created: str
    quarantine_records: int  # in the backup, for the record; not restored (no originals)
    accounts: int = 0
    notes: list[str] = field(default_factory=list)


# --- writing -------------------------------------------------------------------------------------


def write_backup(database_url: str, quarantine_dir: Path, folder: Path, secret: bytes | None = None,
                 force: bool = False, account: str | None = None) -> BackupSummary:
    """Export the state into ``folder``; ``secret`` (the key file's bytes) only when asked."""
    _prepare_folder(folder, force)
    engine = open_engine(database_url)
    try:
        _audit(engine, "backup", str(folder), account)
        rows = _export_database(engine, folder)
    except SQLAlchemyError as exc:
        raise StateError(f"cannot read the database for the backup ({type(exc).__name__})") from exc
    finally:
        engine.dispose()
    rows[QUARANTINE_FILE] = _write_lines(folder / QUARANTINE_FILE, _quarantine_records(quarantine_dir))
    if secret is not None:
        _write_private(folder / SECRET_FILE, lambda out: out.write(secret))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gateway_version": __version__,
        "created": datetime.now(UTC).isoformat(),
        "source_dialect": engine.dialect.name,
        "contains_secret": secret is not None,
        "files": {name: {"rows": rows.get(name), "bytes": (folder / name).stat().st_size,
                         "sha256": _sha256(folder / name)}
                  for name in (*DATA_FILES, *OPTIONAL_FILES,
                               *((SECRET_FILE,) if secret is not None else ()))},
    }
    _write_private(folder / MANIFEST,
                   lambda out: out.write(json.dumps(manifest, indent=2).encode() + b"\n"))
    fsync_dir(folder)
    return BackupSummary(folder, rows, secret is not None)


def _prepare_folder(folder: Path, force: bool) -> None:
    """A private folder without an earlier backup in it (``force``: that backup's files go)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        present = [name for name in ALL_FILES if (folder / name).exists()]
        if present and not force:
            raise StateError(f"{folder} already holds a backup ({', '.join(present)}); choose "
                             "another folder, or --force to replace it")
        for name in present:  # the manifest first: a half-replaced backup is never valid
            (folder / name).unlink()
    except OSError as exc:
        raise StateError(f"cannot use {folder} for the backup ({exc.strerror})") from exc


def _export_database(engine: Engine, folder: Path) -> dict[str, int]:
    """Map, audit and counters from one snapshot of the database, streamed."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return {
                MAP_FILE: _write_lines(folder / MAP_FILE, _map_rows(conn), compressed=True),
                AUDIT_FILE: _write_lines(folder / AUDIT_FILE, _audit_rows(conn), compressed=True),
                COUNTERS_FILE: _write_counters(folder / COUNTERS_FILE, conn),
                ACCOUNTS_FILE: _write_lines(folder / ACCOUNTS_FILE, _account_rows(conn)),
            }


def _stream(conn: Connection, statement: Any) -> Iterator[Any]:
    yield from conn.execution_options(yield_per=BATCH_ROWS).execute(statement)


def _map_rows(conn: Connection) -> Iterator[dict[str, object]]:
    t = PSEUDONYMS.c
    query = select(t.kind, t.original, t.pseudonym, t.first_seen, t.last_seen, t.count) \
        .order_by(t.kind, t.id)  # the order look-ups list entries in
    for row in _stream(conn, query):
        yield {"kind": row.kind, "original": row.original, "pseudonym": row.pseudonym,
               "first_seen": _iso(row.first_seen), "last_seen": _iso(row.last_seen),
               "count": row.count}


def _audit_rows(conn: Connection) -> Iterator[dict[str, object]]:
    t = AUDIT.c
    for row in _stream(conn, select(t.at, t.action, t.query, t.account).order_by(t.id)):
        yield {"at": _iso(row.at), "action": row.action, "query": row.query,
               "account": row.account}


def _account_rows(conn: Connection) -> Iterator[dict[str, object]]:
    t = ACCOUNTS.c
    for row in _stream(conn, select(t.name, t.role, t.password_hash, t.created).order_by(t.name)):
        yield {"name": row.name, "role": row.role, "password_hash": row.password_hash,
               "created": _iso(row.created)}


def _write_counters(path: Path, conn: Connection) -> int:
    t = COUNTERS.c
    counters = [{"name": r.name, "destination": r.destination, "value": r.value}
                for r in conn.execute(select(t.name, t.destination, t.value)
                                      .order_by(t.name, t.destination))]
    _write_private(path, lambda out: out.write(json.dumps({"counters": counters}, indent=2)
                                               .encode() + b"\n"))
    return len(counters)


def _quarantine_records(root: Path) -> Iterator[dict[str, object]]:
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        record = entry / RECORD
        if entry.name.startswith(".") or not record.is_file():
            continue
        try:
            yield json.loads(record.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read quarantine record {entry.name} "
                             f"({type(exc).__name__})") from exc


def _write_lines(path: Path, rows: Iterable[dict[str, object]], compressed: bool = False) -> int:
    count = 0

    def write(out: IO[bytes]) -> None:
        nonlocal count
        target: IO[bytes] | gzip.GzipFile = (
            gzip.GzipFile(fileobj=out, mode="wb", mtime=0) if compressed else out)
        try:
            for row in rows:
                target.write(json.dumps(row, ensure_ascii=False, separators=(",", ":"))
                             .encode() + b"\n")
                count += 1
        finally:
            if compressed:
                target.close()  # writes gzip's trailer; ``out`` stays open

    _write_private(path, write)
    return count


def _write_private(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """A new 0600 file, written by ``write`` and on disk before this returns."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise StateError(f"cannot write {path} ({exc.strerror})") from exc


def _iso(value: datetime) -> str:
    return _utc(value).isoformat()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _audit(engine: Engine, action: str, query: str, account: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(AUDIT.insert(), _audit_values(action, query, account))


def _audit_values(action: str, query: str, account: str | None) -> dict[str, object]:
    return {"at": datetime.now(UTC), "action": action, "query": query[:256],
            "account": (account or _account())[:64]}


# --- reading -------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, after checking it is one this gateway reads and that every file it lists
    is there with its checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    except FileNotFoundError as exc:
        raise StateError(f"{folder} has no {MANIFEST}: not a backup, or an unfinished one") from exc
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {folder / MANIFEST} ({type(exc).__name__})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StateError(f"{folder / MANIFEST} is not a dicom-gateway backup manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise StateError(f"{folder} is backup format {version!r}, made by dicom-gateway "
                         f"{manifest.get('gateway_version')}; this version ({__version__}) reads "
                         f"format {FORMAT_VERSION}: restore with a newer dicom-gateway")
    files = manifest.get("files")
    if not isinstance(files, dict) or any(name not in files for name in DATA_FILES):
        raise StateError(f"{folder / MANIFEST} does not list every file of a backup")
    for name, facts in files.items():
        if name not in ALL_FILES or not isinstance(facts, dict):
            raise StateError(f"{folder / MANIFEST} lists an unknown file")
        _verify(folder / name, str(facts.get("sha256")))
    return manifest


def _verify(path: Path, expected: str) -> None:
    try:
        actual = _sha256(path)
    except OSError as exc:
        raise StateError(f"cannot read {path} ({exc.strerror}); the backup is incomplete") from exc
    if actual != expected:
        raise StateError(f"{path.name} does not match its checksum in {MANIFEST}: the backup was "
                         "damaged or changed; nothing was restored")


def backup_secret(folder: Path) -> bytes | None:
    """The key stored in a (verified) backup, if it holds one."""
    path = folder / SECRET_FILE
    return path.read_bytes() if path.is_file() else None


def restore_backup(database_url: str, folder: Path, manifest: dict[str, Any],
                   account: str | None = None) -> RestoreSummary:
    """Load a verified backup into an empty map: all of it in one transaction, or nothing."""
    files = manifest["files"]
    engine = open_engine(database_url)
    try:
        with engine.begin() as conn:
            _require_empty_map(conn)
            entries = _insert_lines(conn, PSEUDONYMS, _read_lines(folder / MAP_FILE, _map_values),
                                    files[MAP_FILE].get("rows"), MAP_FILE)
            audits = _insert_lines(conn, AUDIT, _read_lines(folder / AUDIT_FILE, _audit_values_of),
                                   files[AUDIT_FILE].get("rows"), AUDIT_FILE)
            counters = _restore_counters(conn, folder / COUNTERS_FILE)
            accounts, notes = _restore_accounts(conn, folder, files)
            conn.execute(AUDIT.insert(), _audit_values(
                "restore", f"{manifest.get('created')} {manifest.get('source_dialect')} {folder}",
                account))
    except SQLAlchemyError as exc:
        raise StateError(f"cannot restore into the database ({type(exc).__name__}); nothing was "
                         "restored") from exc
    finally:
        engine.dispose()
    return RestoreSummary(entries, audits, counters, str(manifest.get("source_dialect")),
                          str(manifest.get("created")),
                          int(files[QUARANTINE_FILE].get("rows") or 0), accounts, notes)


def _require_empty_map(conn: Connection) -> None:
    if conn.execute(select(PSEUDONYMS.c.id).limit(1)).first() is not None:
        raise StateError("gateway.database_url: the pseudonym map there is not empty; restore "
                         "only into a new database (nothing was restored)")


def _read_lines(path: Path, convert: Callable[[dict[str, Any]], dict[str, object]],
                compressed: bool = True) -> Iterator[dict[str, object]]:
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as lines:
            for number, line in enumerate(lines, 1):
                try:
                    yield convert(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise StateError(f"{path.name} line {number} is not a valid row "
                                     f"({type(exc).__name__}); nothing was restored") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise StateError(f"cannot read {path.name} ({type(exc).__name__})") from exc


def _map_values(row: dict[str, Any]) -> dict[str, object]:
    return {"kind": str(row["kind"]), "original": str(row["original"]),
            "pseudonym": str(row["pseudonym"]),
            "first_seen": datetime.fromisoformat(row["first_seen"]),
            "last_seen": datetime.fromisoformat(row["last_seen"]), "count": int(row["count"])}


def _audit_values_of(row: dict[str, Any]) -> dict[str, object]:
    return {"at": datetime.fromisoformat(row["at"]), "action": str(row["action"]),
            "query": str(row["query"]), "account": str(row["account"])}


def _insert_lines(conn: Connection, table: Any, rows: Iterable[dict[str, object]],
                  expected: object, name: str) -> int:
    count = 0
    batch: list[dict[str, object]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            conn.execute(table.insert(), batch)
            count, batch = count + len(batch), []
    if batch:
        conn.execute(table.insert(), batch)
        count += len(batch)
    if expected is not None and count != expected:
        raise StateError(f"{name} has {count} rows where {MANIFEST} says {expected}; nothing "
                         "was restored")
    return count


def _restore_accounts(conn: Connection, folder: Path, files: dict[str, Any]
                      ) -> tuple[int, list[str]]:
    """The console's accounts, but never over one of the same name added since."""
    if ACCOUNTS_FILE not in files:
        return 0, ["the backup has no console accounts (made before they were backed up)"]
    existing = set(conn.execute(select(ACCOUNTS.c.name)).scalars())
    rows = list(_read_lines(folder / ACCOUNTS_FILE, _account_values, compressed=False))
    kept = sorted(str(row["name"]) for row in rows if row["name"] in existing)
    fresh = [row for row in rows if row["name"] not in existing]
    if fresh:
        conn.execute(ACCOUNTS.insert(), fresh)
    notes = [f"console accounts kept as they are here: {', '.join(kept)}"] if kept else []
    return len(fresh), notes


def _account_values(row: dict[str, Any]) -> dict[str, object]:
    return {"name": str(row["name"]), "role": str(row["role"]),
            "password_hash": str(row["password_hash"]),
            "created": datetime.fromisoformat(row["created"])}


def _restore_counters(conn: Connection, path: Path) -> int:
    try:
        counters = json.loads(path.read_text("utf-8"))["counters"]
        counts = {(str(c["name"]), str(c["destination"])): int(c["value"]) for c in counters}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"cannot read {path.name} ({type(exc).__name__})") from exc
    _add_counts(conn, counts)
    return len(counts)
