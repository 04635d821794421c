"""The pseudonym map: original -> pseudonym for patients, UIDs and date shifts.

It is the re-identification key, so the SQLite file is created readable by its owner only.
Any SQLAlchemy URL works; SQLite under the data folder is the default. Look-ups of the map are
themselves recorded in the audit table.
"""

from __future__ import annotations

import getpass
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from gateway.deid.engine import Pseudonym
from gateway.errors import StateError

# One writer at a time in this process: SQLite serialises writers anyway, and taking turns here
# avoids its lock-upgrade failures when receive and forward threads commit at once.
WRITE_LOCK = threading.RLock()


class Base(DeclarativeBase):
    pass


class PseudonymRow(Base):
    __tablename__ = "pseudonyms"
    __table_args__ = (UniqueConstraint("kind", "original"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    original: Mapped[str] = mapped_column(String(256))
    pseudonym: Mapped[str] = mapped_column(String(128), index=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    count: Mapped[int] = mapped_column(Integer, default=1)


class AuditRow(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(32))
    query: Mapped[str] = mapped_column(String(256))
    account: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class MapEntry:
    kind: str
    original: str
    pseudonym: str
    first_seen: datetime
    last_seen: datetime
    count: int


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite would follow the umask).

    Never open an existing database file here: closing any descriptor of a file drops this
    process's POSIX locks on it, and SQLite would then let another process delete the WAL that
    this process is still writing to.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # by path: no descriptor, so no lock is dropped
        return
    os.close(fd)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (status, lookup) never block the writer
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_engine(url: str) -> Engine:
    """Open (and create) the database; an SQLite file is made 0600 before anything is in it."""
    try:
        sqlite_file = _sqlite_path(url)
        if sqlite_file is not None:
            _create_private_file(sqlite_file)
        engine = create_engine(url)
        if sqlite_file is not None:
            event.listen(engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise StateError(f"cannot open the database ({type(exc).__name__}: {exc})") from exc
    return engine


def _now() -> datetime:
    return datetime.now(UTC)


def _aggregate(pseudonyms: Iterable[Pseudonym]) -> dict[tuple[str, str], tuple[str, int]]:
    merged: dict[tuple[str, str], tuple[str, int]] = {}
    for p in pseudonyms:
        _, count = merged.get((p.kind, p.original), (p.pseudonym, 0))
        merged[(p.kind, p.original)] = (p.pseudonym, count + 1)
    return merged


class PseudonymStore:
    """The only persistent mapping state; each call is one transaction."""

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def record(self, pseudonyms: Iterable[Pseudonym]) -> None:
        """Add or count pairs (a batch of any number of instances' pseudonyms at once)."""
        merged = _aggregate(pseudonyms)
        if not merged:
            return
        try:
            self._record(merged)
        except IntegrityError:
            # Another process inserted one of the same pairs meanwhile: now it is there, count it.
            self._record(merged)

    def _record(self, merged: dict[tuple[str, str], tuple[str, int]]) -> None:
        now = _now()
        try:
            with WRITE_LOCK, Session(self.engine) as session, session.begin():
                existing = self._existing(session, list(merged))
                for (kind, original), (pseudonym, count) in merged.items():
                    row_id = existing.get((kind, original))
                    if row_id is None:
                        session.add(PseudonymRow(kind=kind, original=original,
                                                 pseudonym=pseudonym, first_seen=now,
                                                 last_seen=now, count=count))
                    else:
                        session.execute(
                            update(PseudonymRow).where(PseudonymRow.id == row_id).values(
                                last_seen=now, count=PseudonymRow.count + count)
                        )
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write the pseudonym map ({type(exc).__name__})") from exc

    @staticmethod
    def _existing(session: Session, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        by_kind: dict[str, list[str]] = {}
        for kind, original in keys:
            by_kind.setdefault(kind, []).append(original)
        for kind, originals in by_kind.items():
            for start in range(0, len(originals), 500):  # stay under SQL parameter limits
                chunk = originals[start : start + 500]
                rows = session.execute(
                    select(PseudonymRow.id, PseudonymRow.original).where(
                        PseudonymRow.kind == kind, PseudonymRow.original.in_(chunk))
                )
                found.update({(kind, original): row_id for row_id, original in rows})
        return found

    def lookup(self, term: str, account: str | None = None) -> list[MapEntry]:
        """Entries whose original or pseudonym equals ``term``; the look-up is audited."""
        self.audit("map lookup", term, account)
        with Session(self.engine) as session:
            rows = session.scalars(
                select(PseudonymRow).where(
                    or_(PseudonymRow.original == term, PseudonymRow.pseudonym == term)
                ).order_by(PseudonymRow.kind, PseudonymRow.id)
            )
            return [_entry(r) for r in rows]

    def export(self, kinds: Iterable[str] = (), account: str | None = None) -> Iterator[MapEntry]:
        kinds = tuple(kinds)
        self.audit("map export", ",".join(kinds) or "all", account)
        with Session(self.engine) as session:
            query = select(PseudonymRow).order_by(PseudonymRow.kind, PseudonymRow.id)
            if kinds:
                query = query.where(PseudonymRow.kind.in_(kinds))
            for row in session.scalars(query):
                yield _entry(row)

    def audit(self, action: str, query: str, account: str | None = None) -> None:
        with WRITE_LOCK, Session(self.engine) as session, session.begin():
            session.add(AuditRow(at=_now(), action=action, query=query[:256],
                                 account=(account or _account())[:64]))

    def audit_entries(self) -> list[tuple[datetime, str, str, str]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id))
            return [(r.at, r.action, r.query, r.account) for r in rows]


def backup_database(url: str, target: Path) -> None:
    """Copy an SQLite database consistently while the gateway runs (SQLite's online backup)."""
    import sqlite3

    source = _sqlite_path(url)
    if source is None:
        raise StateError("gateway.database_url: backup copies SQLite only; back up other "
                         "databases with their own tools (e.g. pg_dump)")
    _create_private_file(target)
    try:
        with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
    except sqlite3.Error as exc:
        raise StateError(f"cannot back up the database ({exc})") from exc


def _entry(row: PseudonymRow) -> MapEntry:
    return MapEntry(row.kind, row.original, row.pseudonym, row.first_seen, row.last_seen,
                    row.count)


def _account() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"
