"""The gateway's state, in one database behind this one module.

- The pseudonym map: original -> pseudonym for patients, UIDs and date shifts. It is the
  re-identification key, so the SQLite file is created readable by its owner only; look-ups of
  the map are themselves recorded in the audit table.
- Forwarding bookkeeping: which destination has which spool entry, and the running counts that
  ``status`` reports. A delivery row is written after the archive acknowledged (or a filter or
  dead-letter decided): losing one in a crash means sending that instance again, never losing it.

Any SQLAlchemy URL works; SQLite under the data folder is the default.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from gateway.errors import StateError

if TYPE_CHECKING:  # the forwarding process keeps state without loading the engine
    from gateway.deid.engine import Pseudonym

# One writer at a time in this process: SQLite serialises writers anyway, and taking turns here
# avoids its lock-upgrade failures when receive and forward threads commit at once.
WRITE_LOCK = threading.RLock()


KNOWN_CACHE = 20_000  # pairs remembered as written (about 4 MB); bounded so memory stays flat
COUNT_FLUSH_SECONDS = 2.0
COMMIT_WAIT_SECONDS = 60.0  # bound on waiting for a map commit (SQLite waits 10 s for locks)

_T = TypeVar("_T")


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


PSEUDONYMS: Table = PseudonymRow.__table__  # type: ignore[assignment]


class AuditRow(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(32))
    query: Mapped[str] = mapped_column(String(256))
    account: Mapped[str] = mapped_column(String(64))


AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]


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


POOL_RECYCLE_SECONDS = 1800  # below the idle timeouts of firewalls and poolers in between
CONNECT_TIMEOUT_SECONDS = 10
DRIVER_EXTRAS = {"postgresql": "postgresql"}  # backend -> the extra that installs its driver


def open_engine(url: str) -> Engine:
    """Open (and create) the database; an SQLite file is made 0600 before anything is in it.

    A server database's pooled connections are checked before each use (a restarted server
    leaves them dead) and replaced now and then.
    """
    try:
        sqlite_file = _sqlite_path(url)
        if sqlite_file is not None:
            _create_private_file(sqlite_file)
            engine = create_engine(url)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_recycle=POOL_RECYCLE_SECONDS,
                                   connect_args=_connect_args(url))
        _create_tables(engine)
    except ImportError as exc:
        raise StateError(_missing_driver(url, exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        raise StateError(f"cannot open the database ({type(exc).__name__}: {_first_line(exc)})") \
            from exc
    return engine


def _connect_args(url: str) -> dict[str, object]:
    if make_url(url).get_backend_name() == "postgresql":
        return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}  # an unreachable host must not hang
    return {}


def _create_tables(engine: Engine) -> None:
    """Create missing tables; two nodes starting on one new database may both try, and the
    loser of that race finds the tables there on a second look."""
    try:
        Base.metadata.create_all(engine)
    except (IntegrityError, ProgrammingError):
        Base.metadata.create_all(engine)


def _missing_driver(url: str, exc: ImportError) -> str:
    backend = make_url(url).get_backend_name()
    extra = DRIVER_EXTRAS.get(backend)
    if extra is None:
        return (f"gateway.database_url: the {backend} driver is not installed "
                f"(no module {exc.name or 'for it'}); install the one the URL names")
    hint = "" if make_url(url).get_driver_name() == "psycopg" else \
        ", and write the URL as postgresql+psycopg://..."
    return (f"gateway.database_url: the PostgreSQL driver is not installed; "
            f"pip install 'dicom-gateway[{extra}]'{hint}")


def _first_line(exc: BaseException) -> str:
    """The database's own words, without SQLAlchemy's statement dump and links."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _dialect_insert(dialect: str, table: Table) -> Any:
    """The dialect's INSERT with ON CONFLICT, or None if the dialect has none."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    else:
        return None
    return insert(table)


def _upsert_statement(dialect: str) -> Any:
    """The dialect's INSERT of map rows that turns a duplicate into an update (adding to its
    count), if the dialect has one."""
    statement = _dialect_insert(dialect, PSEUDONYMS)
    if statement is None:
        return None
    return statement.on_conflict_do_update(
        index_elements=["kind", "original"],
        set_={"count": PSEUDONYMS.c.count + statement.excluded.count,
              "last_seen": statement.excluded.last_seen},
    )


# The two upserts every received instance waits on, as SQL the driver runs itself: through
# SQLAlchemy's compiled INSERT ... ON CONFLICT a map commit cost about 190 us of CPU, through
# exec_driver_sql about 145 (measured, SQLite, one pair and a count). Same statements, same
# rows; other databases keep the portable path.
_PAIR_UPSERT_SQL = (
    'INSERT INTO pseudonyms (kind, original, pseudonym, first_seen, last_seen, "count") '
    "VALUES ({0}, {0}, {0}, {0}, {0}, {0}) ON CONFLICT (kind, original) DO UPDATE SET "
    '"count" = pseudonyms."count" + excluded."count", last_seen = excluded.last_seen')
_COUNTER_UPSERT_SQL = (
    "INSERT INTO counters (name, destination, value) VALUES ({0}, {0}, {0}) "
    "ON CONFLICT (name, destination) DO UPDATE SET value = counters.value + excluded.value")
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@dataclass(frozen=True)
class _DriverUpserts:
    pairs: str
    counters: str
    time_value: Callable[[datetime], object]  # a datetime as the driver is to be given it


def _driver_upserts(dialect: Dialect) -> _DriverUpserts | None:
    mark = _PLACEHOLDERS.get(dialect.paramstyle)
    if dialect.name not in ("sqlite", "postgresql") or mark is None:
        return None
    # The column type's own conversion (SQLite: its text format), so rows read back the same
    # whichever path wrote them.
    convert = PSEUDONYMS.c.last_seen.type.dialect_impl(dialect).bind_processor(dialect)
    return _DriverUpserts(_PAIR_UPSERT_SQL.format(mark), _COUNTER_UPSERT_SQL.format(mark),
                          convert or _unchanged)


def _unchanged(value: datetime) -> object:
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _aggregate(pseudonyms: Iterable[Pseudonym]) -> dict[tuple[str, str], tuple[str, int]]:
    merged: dict[tuple[str, str], tuple[str, int]] = {}
    for p in pseudonyms:
        _, count = merged.get((p.kind, p.original), (p.pseudonym, 0))
        merged[(p.kind, p.original)] = (p.pseudonym, count + 1)
    return merged


class _Writer:
    """A store's own connection for its writes, held open: taking one from the pool for each
    small transaction cost more than the transaction's own work. One that fails is dropped and
    the next write opens another.

    The held connection is not checked before each use (that would cost a round trip per
    write); instead ``run`` repeats a transaction once when the connection turns out dead
    before the commit was sent (a restarted server): the server then rolled it back, so
    nothing is written twice. A commit whose outcome is unknown is never repeated.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    def run(self, work: Callable[[Connection], _T]) -> _T:
        """``work(conn)`` in one transaction, committed before this returns."""
        with WRITE_LOCK:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    transaction = conn.begin()
                    result = work(conn)
                except DBAPIError as exc:
                    self.close()
                    if attempt == 1 and exc.connection_invalidated:
                        continue
                    raise
                except BaseException:
                    self.close()
                    raise
                try:
                    transaction.commit()
                except BaseException:
                    self.close()
                    raise
                return result
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def close(self) -> None:
        with WRITE_LOCK:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(SQLAlchemyError):
                    conn.close()


class PendingRecord:
    """A map write queued for the next group commit; ``wait`` returns once it is durable."""

    def __init__(self, rows: dict[tuple[str, str], tuple[str, int, datetime]],
                 counts: Mapping[tuple[str, str], int] | None, queued: bool) -> None:
        self.rows = rows
        self.counts = counts
        self._finished = threading.Event()
        self._error: StateError | None = None
        if not queued:  # nothing to write
            self._finished.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def finish(self, error: StateError | None) -> None:
        self._error = error
        self._finished.set()

    def wait(self, timeout: float = COMMIT_WAIT_SECONDS) -> None:
        if not self._finished.wait(timeout):
            raise StateError("the pseudonym map write did not finish in time")
        if self._error is not None:
            raise self._error


class PseudonymStore:
    """The only persistent mapping state.

    New pairs are written in group commits by the store's committer thread: each transaction
    holds every pair queued while the one before was being written, from all associations.
    A receiver queues its pairs, writes and syncs its spool file while they are committed, then
    waits for them: the two disk syncs overlap instead of adding up.
    """

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)
        self._upsert = _upsert_statement(self.engine.dialect.name)
        self._driver = _driver_upserts(self.engine.dialect)
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], None] = {}  # insertion-ordered: oldest first out
        self._pending: dict[tuple[str, str], tuple[int, datetime]] = {}  # count, last seen
        self._last_flush = time.monotonic()
        self._queue: list[PendingRecord] = []
        self._queued = threading.Condition(self._lock)
        self._committer: threading.Thread | None = None
        self._committer_pid = 0
        self._closing = False
        self._writer = _Writer(self.engine)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._queued.notify()
            committer = self._committer
        try:
            if committer is not None and self._committer_pid == os.getpid():
                committer.join(COMMIT_WAIT_SECONDS)  # it writes what is queued, then ends
            self.flush()
        finally:
            self._writer.close()
            self.engine.dispose()

    def record(
        self, pseudonyms: Iterable[Pseudonym], counts: Mapping[tuple[str, str], int] | None = None
    ) -> None:
        """Add pairs to the map, or count them again, and return once that is durable."""
        self.record_later(pseudonyms, counts).wait()

    def record_later(
        self, pseudonyms: Iterable[Pseudonym], counts: Mapping[tuple[str, str], int] | None = None
    ) -> PendingRecord:
        """Queue pairs (and ``counts``, in the same transaction) for the map; the caller must
        ``wait`` on the result before counting on them.

        A pair the map may not have yet is committed: the map is the re-identification key.
        Pairs this process already wrote (the patient, study and series of a stream of
        instances) are only counted in memory, and their counts and last-seen times written
        every few seconds and on close: statistics, of which a crash may lose the last seconds.
        """
        merged = _aggregate(pseudonyms)
        now = _now()
        with self._lock:
            fresh = {k: v for k, v in merged.items() if k not in self._known}
            for key, (_, count) in merged.items():
                if key not in fresh:
                    seen_before = self._pending.get(key, (0, now))[0]
                    self._pending[key] = (seen_before + count, now)
            rows = {k: (p, c, now) for k, (p, c) in fresh.items()}
            pending = PendingRecord(rows, counts, queued=bool(fresh or counts))
            if pending.done:
                pass
            elif self._closing:
                pending.finish(StateError("the pseudonym map is closed"))
            else:
                self._queue.append(pending)
                self._start_committer()
                self._queued.notify()
        if time.monotonic() - self._last_flush > COUNT_FLUSH_SECONDS:
            self._flush_in_passing()
        return pending

    def _start_committer(self) -> None:
        """Started with the first write (``_lock`` held), and again in a forked child, which
        has the store but not the thread."""
        if self._committer is not None and self._committer_pid == os.getpid():
            return
        self._committer_pid = os.getpid()
        self._committer = threading.Thread(target=self._commit_queued, name="map-committer",
                                           daemon=True)
        self._committer.start()

    def _commit_queued(self) -> None:
        """The committer thread: one transaction for everything queued, until closed."""
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._queued.wait()
                batch, self._queue = self._queue, []
            if not batch:
                return  # closed, and nothing left to write
            try:
                self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - a waiter must get an answer, not a timeout
                failure = StateError(f"cannot write the pseudonym map ({type(exc).__name__})")
                for pending in batch:
                    pending.finish(failure)

    def _commit(self, batch: list[PendingRecord]) -> None:
        rows: dict[tuple[str, str], tuple[str, int, datetime]] = {}
        counts: Counter[tuple[str, str]] = Counter()
        for pending in batch:
            for key, (pseudonym, count, seen) in pending.rows.items():
                rows[key] = (pseudonym, rows.get(key, ("", 0, seen))[1] + count, seen)
            counts.update(pending.counts or {})
        try:
            self._write(rows, counts=counts)
        except StateError as exc:
            for pending in batch:
                pending.finish(exc)
            return
        with self._lock:
            for key in rows:
                self._known[key] = None
            while len(self._known) > KNOWN_CACHE:
                self._known.pop(next(iter(self._known)))
        for pending in batch:
            pending.finish(None)

    def flush(self) -> None:
        """Write the counts and last-seen times gathered in memory; on failure they stay there
        for the next flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        if not pending:
            return
        try:
            self._write({k: ("", count, last) for k, (count, last) in pending.items()},
                        counts_only=True)
        except StateError:
            with self._lock:
                for key, (count, last) in pending.items():
                    newer_count, newer_last = self._pending.get(key, (0, last))
                    self._pending[key] = (count + newer_count, max(last, newer_last))
            raise

    def _flush_in_passing(self) -> None:
        """A flush on a receiver's way: statistics must not fail an instance whose pairs were
        written (the counts stay in memory for the next try)."""
        with contextlib.suppress(StateError):
            self.flush()

    def _write(self, rows: dict[tuple[str, str], tuple[str, int, datetime]],
               counts_only: bool = False,
               counts: Mapping[tuple[str, str], int] | None = None) -> None:
        # Sorted, as every node writes them: two transactions taking row locks in one order
        # wait for each other instead of deadlocking.
        ordered = sorted(rows.items())

        def values() -> list[dict[str, object]]:
            return [{"kind": kind, "original": original, "pseudonym": pseudonym,
                     "first_seen": seen, "last_seen": seen, "count": count}
                    for (kind, original), (pseudonym, count, seen) in ordered]

        def work(conn: Connection) -> None:
            if counts:
                _add_counts(conn, counts, self._driver)
            if not ordered:
                pass
            elif counts_only:
                conn.execute(_ADD_TO_PAIR, [{"b_kind": kind, "b_original": original,
                                             "b_count": count, "b_seen": seen}
                                            for (kind, original), (_, count, seen) in ordered])
            elif self._driver is not None:
                time_value = self._driver.time_value
                conn.exec_driver_sql(self._driver.pairs, [
                    (kind, original, pseudonym, time_value(seen), time_value(seen), count)
                    for (kind, original), (pseudonym, count, seen) in ordered])
            elif self._upsert is not None:
                conn.execute(self._upsert, values())
            else:
                self._write_portably(conn, values())

        try:
            self._writer.run(work)
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write the pseudonym map ({type(exc).__name__})") from exc

    @staticmethod
    def _write_portably(conn: Connection, values: list[dict[str, object]]) -> None:
        """Databases without INSERT ... ON CONFLICT: update, then insert what was missing."""
        table = PSEUDONYMS
        for v in values:
            updated = conn.execute(
                update(table).where(table.c.kind == v["kind"], table.c.original == v["original"])
                .values(count=table.c.count + v["count"], last_seen=v["last_seen"]))
            if not updated.rowcount:
                conn.execute(table.insert().values(**v))

    def lookup(self, term: str, account: str | None = None) -> list[MapEntry]:
        """Entries whose original equals ``term`` exactly, or whose pseudonym equals it in any
        case (pseudonyms are upper-case IDs and numeric UIDs; users type them in lower case);
        the look-up is audited."""
        self.flush()
        self.audit("map lookup", term, account)
        typed = {term.strip(), term.strip().upper()}
        with Session(self.engine) as session:
            rows = session.scalars(
                select(PseudonymRow).where(
                    or_(PseudonymRow.original == term, PseudonymRow.pseudonym.in_(typed))
                ).order_by(PseudonymRow.kind, PseudonymRow.id)
            )
            return [_entry(r) for r in rows]

    def export(self, kinds: Iterable[str] = (), account: str | None = None) -> Iterator[MapEntry]:
        kinds = tuple(kinds)
        self.flush()
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


def _entry(row: PseudonymRow) -> MapEntry:
    return MapEntry(row.kind, row.original, row.pseudonym, _utc(row.first_seen),
                    _utc(row.last_seen), row.count)


def _utc(value: datetime) -> datetime:
    """SQLite hands back the naive UTC times it stored, PostgreSQL times in the session's zone:
    the same answer from both."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _account() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


# --- forwarding bookkeeping and counters -------------------------------------------------------

SENT = "sent"
FILTERED = "filtered"
DEAD = "dead"
NOT_ADDRESSED = "not-addressed"  # a released dead letter goes to one destination only

# Counter names; destination "" is the gateway as a whole.
RECEIVED = "received"
QUARANTINED = "quarantined"
FORWARDED = "forwarded"
DEAD_LETTERED = "dead_lettered"
FILTERED_COUNT = "filtered"


class DeliveryRow(Base):
    __tablename__ = "deliveries"

    entry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CounterRow(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    destination: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    value: Mapped[int] = mapped_column(Integer, default=0)


COUNTERS: Table = CounterRow.__table__  # type: ignore[assignment]
DELIVERIES: Table = DeliveryRow.__table__  # type: ignore[assignment]


def _delivery_upsert(dialect: str) -> Any:
    """The dialect's INSERT of a delivery row that replaces the row's outcome, if it has one."""
    statement = _dialect_insert(dialect, DELIVERIES)
    if statement is None:
        return None
    return statement.on_conflict_do_update(
        index_elements=["entry_id", "destination"],
        set_={"outcome": statement.excluded.outcome, "at": statement.excluded.at},
    )


class Deliveries:
    """Delivery rows are written at once; counters are added up in memory and written by
    ``flush`` (every second while serving, and on close): status may lag by that much."""

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)
        self._writer = _Writer(self.engine)
        self._upsert = _delivery_upsert(self.engine.dialect.name)
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._writer.close()
            self.engine.dispose()

    def record(
        self,
        outcomes: Iterable[tuple[str, str, str]],
        counts: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Store (entry_id, destination, outcome) rows durably; add ``counts`` to the counters."""
        if counts:
            self.count(counts)
        rows = list(outcomes)
        if not rows:
            return
        now = datetime.now(UTC)
        values = [{"entry_id": entry_id, "destination": destination, "outcome": outcome,
                   "at": now} for entry_id, destination, outcome in rows]
        values.sort(key=lambda v: (v["entry_id"], v["destination"]))  # one lock order on every node

        def work(conn: Connection) -> None:
            if self._upsert is not None:
                conn.execute(self._upsert, values)
                return
            for v in values:  # databases without INSERT ... ON CONFLICT
                conn.execute(delete(DELIVERIES).where(
                    DELIVERIES.c.entry_id == v["entry_id"],
                    DELIVERIES.c.destination == v["destination"]))
                conn.execute(DELIVERIES.insert().values(**v))

        try:
            self._writer.run(work)
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write delivery state ({type(exc).__name__})") from exc

    def audit_many(self, entries: Iterable[tuple[str, str]], account: str | None = None) -> None:
        """Add (action, query) rows to the audit table, all in one transaction."""
        now, who = _now(), (account or _account())[:64]
        values = [{"at": now, "action": action[:32], "query": query[:256], "account": who}
                  for action, query in entries]
        if not values:
            return
        try:
            self._writer.run(lambda conn: conn.execute(AUDIT.insert(), values))
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write audit rows ({type(exc).__name__})") from exc

    def count(self, counts: Mapping[tuple[str, str], int], durable: bool = False) -> None:
        """Add to counters: in memory, or (``durable``) committed before returning."""
        with self._lock:
            self._counts.update(counts)
        if durable:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not +counts:
            return
        try:
            self._writer.run(lambda conn: _add_counts(conn, counts))
        except SQLAlchemyError as exc:
            with self._lock:
                self._counts.update(counts)  # keep them for the next try
            raise StateError(f"cannot write counters ({type(exc).__name__})") from exc

    def delivered(self, destination: str) -> set[str]:
        try:
            with Session(self.engine) as session:
                rows = session.scalars(
                    select(DeliveryRow.entry_id).where(DeliveryRow.destination == destination)
                )
                return set(rows)
        except SQLAlchemyError as exc:
            raise StateError(f"cannot read delivery state ({type(exc).__name__})") from exc

    def forget(self, entry_ids: Iterable[str]) -> None:
        ids = list(entry_ids)
        if not ids:
            return
        try:
            with WRITE_LOCK, Session(self.engine) as session, session.begin():
                for start in range(0, len(ids), 500):
                    session.execute(delete(DeliveryRow).where(
                        DeliveryRow.entry_id.in_(ids[start : start + 500])))
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write delivery state ({type(exc).__name__})") from exc

    def counters(self) -> dict[tuple[str, str], int]:
        self.flush()
        try:
            with Session(self.engine) as session:
                return {(r.name, r.destination): r.value
                        for r in session.scalars(select(CounterRow))}
        except SQLAlchemyError as exc:
            raise StateError(f"cannot read the counters ({type(exc).__name__})") from exc


# Statements built once: building them per commit costs more than the commit's own SQL.
_ADD_TO_PAIR = (
    update(PSEUDONYMS)
    .where(PSEUDONYMS.c.kind == bindparam("b_kind"),
           PSEUDONYMS.c.original == bindparam("b_original"))
    .values(count=PSEUDONYMS.c.count + bindparam("b_count"), last_seen=bindparam("b_seen"))
)
_ADD_TO_COUNTER = (
    update(COUNTERS)
    .where(COUNTERS.c.name == bindparam("b_name"), COUNTERS.c.destination == bindparam("b_dest"))
    .values(value=COUNTERS.c.value + bindparam("b_value"))
)
_NEW_COUNTER = COUNTERS.insert()
_COUNTER_UPSERTS: dict[str, Any] = {}


def _counter_upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT adding to the value: two nodes creating one counter row at once
    both succeed, where an UPDATE-then-INSERT would make one fail on the primary key."""
    if dialect not in _COUNTER_UPSERTS:
        statement = _dialect_insert(dialect, COUNTERS)
        _COUNTER_UPSERTS[dialect] = None if statement is None else statement.on_conflict_do_update(
            index_elements=["name", "destination"],
            set_={"value": COUNTERS.c.value + statement.excluded.value},
        )
    return _COUNTER_UPSERTS[dialect]


def _add_counts(conn: Connection, counts: Mapping[tuple[str, str], int],
                driver: _DriverUpserts | None = None) -> None:
    added = [(name, destination, value)
             for (name, destination), value in sorted(counts.items()) if value]
    if not added:
        return
    if driver is not None:
        conn.exec_driver_sql(driver.counters, added)
        return
    rows = [{"name": name, "destination": destination, "value": value}
            for name, destination, value in added]
    upsert = _counter_upsert(conn.dialect.name)
    if upsert is not None:
        conn.execute(upsert, rows)
        return
    for row in rows:  # databases without INSERT ... ON CONFLICT
        updated = conn.execute(_ADD_TO_COUNTER, {"b_name": row["name"],
                                                 "b_dest": row["destination"],
                                                 "b_value": row["value"]})
        if not updated.rowcount:
            conn.execute(_NEW_COUNTER, row)


def entry_created(entry_id: str) -> float:
    """Spool entry ids start with their creation time in nanoseconds."""
    try:
        return int(entry_id.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0


def pending_report(
    deliveries: Deliveries, spool_ids: list[str], destinations: list[str], now: float
) -> dict[str, dict[str, object]]:
    """What each destination still has to receive from this node's spool."""
    report: dict[str, dict[str, object]] = {}
    for name in destinations:
        done = deliveries.delivered(name)
        pending = [i for i in spool_ids if i not in done]
        oldest = min((entry_created(i) for i in pending), default=None)
        report[name] = {
            "pending": len(pending),
            "oldest_pending_age_seconds": None if oldest is None else round(now - oldest, 3),
        }
    return report


def totals_report(deliveries: Deliveries, destinations: list[str]) -> dict[str, object]:
    """Counts since the database was made, by every node that shares it."""
    counters = deliveries.counters()
    per_destination = {name: {"forwarded": counters.get((FORWARDED, name), 0),
                              "dead_lettered": counters.get((DEAD_LETTERED, name), 0),
                              "filtered": counters.get((FILTERED_COUNT, name), 0)}
                       for name in destinations}
    return {
        "received": counters.get((RECEIVED, ""), 0),
        "forwarded": sum(d["forwarded"] for d in per_destination.values()),
        "quarantined": counters.get((QUARANTINED, ""), 0),
        "dead_lettered": sum(d["dead_lettered"] for d in per_destination.values()),
        "map": map_sizes(deliveries.engine),
        "destinations": per_destination,
    }


def map_sizes(engine: Engine) -> dict[str, int]:
    """Pseudonym map entries by kind (patient, uid, date_shift)."""
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(PSEUDONYMS.c.kind, func.count()).group_by(PSEUDONYMS.c.kind))
            return {str(kind): int(count) for kind, count in rows}
    except SQLAlchemyError as exc:
        raise StateError(f"cannot read the pseudonym map ({type(exc).__name__})") from exc


# --- web console accounts ----------------------------------------------------------------------

ROLES = ("admin", "viewer")


class AccountRow(Base):
    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))  # scheme$parameters$salt$hash
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password_hash: str
    created: datetime


class Accounts:
    """Web console accounts; the hashing is the caller's (gateway.web.accounts)."""

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def add(self, name: str, role: str, password_hash: str) -> None:
        if role not in ROLES:
            raise StateError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        try:
            with WRITE_LOCK, Session(self.engine) as session, session.begin():
                if session.get(AccountRow, name) is not None:
                    raise StateError(f"an account named {name!r} exists already")
                session.add(AccountRow(name=name, role=role, password_hash=password_hash,
                                       created=_now()))
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write accounts ({type(exc).__name__})") from exc

    def remove(self, name: str) -> bool:
        try:
            with WRITE_LOCK, Session(self.engine) as session, session.begin():
                removed = session.execute(delete(AccountRow).where(AccountRow.name == name))
                return bool(removed.rowcount)  # type: ignore[attr-defined]
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write accounts ({type(exc).__name__})") from exc

    def get(self, name: str) -> Account | None:
        try:
            with Session(self.engine) as session:
                row = session.get(AccountRow, name)
                return None if row is None else _account_of(row)
        except SQLAlchemyError as exc:
            raise StateError(f"cannot read accounts ({type(exc).__name__})") from exc

    def list(self) -> list[Account]:
        try:
            with Session(self.engine) as session:
                return [_account_of(r) for r in
                        session.scalars(select(AccountRow).order_by(AccountRow.name))]
        except SQLAlchemyError as exc:
            raise StateError(f"cannot read accounts ({type(exc).__name__})") from exc

    def audit(self, action: str, detail: str, account: str) -> None:
        """Who did what in the console (never values from data sets)."""
        try:
            with WRITE_LOCK, Session(self.engine) as session, session.begin():
                session.add(AuditRow(at=_now(), action=action[:32], query=detail[:256],
                                     account=account[:64]))
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write audit rows ({type(exc).__name__})") from exc


def _account_of(row: AccountRow) -> Account:
    return Account(row.name, row.role, row.password_hash, _utc(row.created))
