"""The state on a real PostgreSQL (and SQLite where the same promise holds): a missing driver is
one clear line, connections recover from a server restart, writes two nodes race on never
collide, counts survive a failed flush, and a map write that failed says so."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError

from gateway import state
from gateway.deid.engine import Pseudonym
from gateway.errors import StateError
from gateway.state import RECEIVED, Deliveries, PseudonymStore

if TYPE_CHECKING:
    from pgserver import PgServer

pytest_plugins = ["pgserver"]  # postgres_server, postgres_url
RACE_ROUNDS = 25  # each round: two writers released at once on rows neither has written yet
THREAD_WAIT = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return str(request.getfixturevalue("postgres_url"))


def both_at_once(first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run the two from one barrier, as two nodes would; re-raise what either raised."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=THREAD_WAIT)
            action()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=THREAD_WAIT)
    assert not any(t.is_alive() for t in threads), "a writer did not finish"
    if errors:
        raise errors[0]


class NoLock:
    """Two nodes are two processes, each with its own ``state.WRITE_LOCK``: in one test process
    that lock would make them take turns, hiding the race."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "WRITE_LOCK", NoLock())


@pytest.fixture
def two_nodes_stores(any_url: str, two_nodes: None) -> Iterator[tuple[PseudonymStore, PseudonymStore]]:
    a, b = PseudonymStore(any_url), PseudonymStore(any_url)  # two engines: two nodes
    yield a, b
    a.close()
    b.close()


# --- the driver ------------------------------------------------------------------------------------


def run_without_psycopg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line in a Python where importing psycopg fails, as without the extra."""
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from gateway.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def postgres_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\ndatabase_url = "{url}"\n'
                      f'port = 11112\n')
    return config


def test_without_the_driver_check_config_names_the_extra_in_one_finding(tmp_path):
    config = postgres_config(tmp_path, "postgresql+psycopg://gateway@127.0.0.1:5432/gateway")
    result = run_without_psycopg(tmp_path, "check-config", "--config", str(config))
    assert "Traceback" not in result.stdout + result.stderr
    findings = [line for line in result.stdout.splitlines() if "gateway.database_url" in line]
    assert findings == ["error: gateway.database_url: the PostgreSQL driver is not installed; "
                        "pip install 'dicom-gateway[postgresql]'"]
    assert result.returncode == 2


def test_without_the_driver_other_commands_end_in_that_one_line(tmp_path):
    config = postgres_config(tmp_path, "postgresql+psycopg://gateway@127.0.0.1:5432/gateway")
    result = run_without_psycopg(tmp_path, "status", "--config", str(config))
    assert result.stderr.splitlines() == [
        "error: gateway.database_url: the PostgreSQL driver is not installed; "
        "pip install 'dicom-gateway[postgresql]'"]
    assert result.returncode == 3


# --- recovery after a restart ----------------------------------------------------------------------


def test_every_kind_of_write_and_read_works_right_after_a_server_restart(
        postgres_url, postgres_server):
    store, deliveries = PseudonymStore(postgres_url), Deliveries(postgres_url)
    try:
        store.record([Pseudonym("patient", "PID-1", "ANON1")], counts={(RECEIVED, ""): 1})
        deliveries.record([("e1", "archive", state.SENT)], counts={(state.FORWARDED, "archive"): 1})
        assert store.lookup("PID-1")  # a pooled reading connection too
        postgres_server.restart()  # every held and pooled connection is now dead

        store.record([Pseudonym("patient", "PID-2", "ANON2")], counts={(RECEIVED, ""): 1})
        deliveries.record([("e2", "archive", state.SENT)])
        deliveries.count({(state.FORWARDED, "archive"): 1}, durable=True)
        assert [e.pseudonym for e in store.lookup("PID-2")] == ["ANON2"]
        assert deliveries.delivered("archive") == {"e1", "e2"}
        assert deliveries.counters() == {(RECEIVED, ""): 2, (state.FORWARDED, "archive"): 2}
    finally:
        store.close()
        deliveries.close()


def test_engines_check_pooled_connections_before_use(postgres_url):
    engine = state.open_engine(postgres_url)
    try:
        assert engine.pool._pre_ping
        assert 0 < engine.pool._recycle <= 3600
    finally:
        engine.dispose()


def test_a_map_write_while_the_server_is_down_fails_and_is_not_in_the_map(
        postgres_url, postgres_server):
    store = PseudonymStore(postgres_url)
    try:
        store.record([Pseudonym("patient", "PID-1", "ANON1")])
        postgres_server.stop()
        with pytest.raises(StateError, match="cannot write the pseudonym map"):
            store.record([Pseudonym("patient", "PID-2", "ANON2")])
        postgres_server.start()
        assert store.lookup("PID-2") == []  # failed means not committed
        store.record([Pseudonym("patient", "PID-2", "ANON2")])  # the sender's retry
        [entry] = store.lookup("PID-2")
        assert (entry.pseudonym, entry.count) == ("ANON2", 1)
    finally:
        store.close()


# --- the held connection: one repeat, and only when nothing can have been written -----------------


def disconnect() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection"),
                            connection_invalidated=True)


def test_writer_repeats_a_transaction_once_when_its_connection_was_dead(tmp_path):
    engine = state.open_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    writer = state._Writer(engine)
    calls = []

    def work(conn: sqlalchemy.Connection) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise disconnect()
        return "done"

    try:
        assert writer.run(work) == "done"
        assert len(calls) == 2
    finally:
        writer.close()
        engine.dispose()


def test_writer_does_not_repeat_twice_nor_other_errors(tmp_path):
    engine = state.open_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    writer = state._Writer(engine)
    calls = []

    def always_dead(conn: sqlalchemy.Connection) -> None:
        calls.append(1)
        raise disconnect()

    def broken(conn: sqlalchemy.Connection) -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    try:
        with pytest.raises(OperationalError):
            writer.run(always_dead)
        assert len(calls) == 2
        calls.clear()
        with pytest.raises(OperationalError):
            writer.run(broken)
        assert len(calls) == 1
    finally:
        writer.close()
        engine.dispose()


def test_a_commit_that_fails_is_never_repeated(tmp_path, monkeypatch):
    """A lost connection at COMMIT leaves the outcome unknown: repeating it could count twice."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    store = PseudonymStore(url)
    real_commit = sqlalchemy.engine.RootTransaction.commit
    commits = []

    def commit_lost(self: sqlalchemy.engine.RootTransaction) -> None:
        commits.append(1)
        real_commit(self)  # it did commit, but the answer never came back
        raise disconnect()

    try:
        monkeypatch.setattr(sqlalchemy.engine.RootTransaction, "commit", commit_lost)
        with pytest.raises(StateError):
            store.record([Pseudonym("patient", "PID-1", "ANON1")], counts={(RECEIVED, ""): 1})
        monkeypatch.undo()
        assert len(commits) == 1
        [entry] = store.lookup("PID-1")
        assert entry.count == 1
    finally:
        store.close()
    deliveries = Deliveries(url)
    try:
        assert deliveries.counters() == {(RECEIVED, ""): 1}
    finally:
        deliveries.close()


# --- races between nodes ---------------------------------------------------------------------------


def test_two_nodes_creating_the_same_counters_at_once_both_succeed(any_url, two_nodes):
    a, b = Deliveries(any_url), Deliveries(any_url)
    try:
        for n in range(RACE_ROUNDS):
            counts = {(RECEIVED, ""): 1, (state.FORWARDED, f"dest-{n}"): 1}
            both_at_once(lambda c=counts: a.count(c, durable=True),
                         lambda c=counts: b.count(c, durable=True))
        counters = a.counters()
        assert counters[(RECEIVED, "")] == 2 * RACE_ROUNDS
        assert all(counters[(state.FORWARDED, f"dest-{n}")] == 2 for n in range(RACE_ROUNDS))
    finally:
        a.close()
        b.close()


def test_two_nodes_mapping_the_same_new_patient_at_once_get_one_entry(two_nodes_stores):
    a, b = two_nodes_stores
    for n in range(RACE_ROUNDS):
        pairs = [Pseudonym("patient", f"PID-{n}", f"ANON{n}"),
                 Pseudonym("uid", f"1.2.3.{n}", f"2.25.{n}")]
        both_at_once(lambda p=pairs: a.record(p, counts={(RECEIVED, ""): 1}),
                     lambda p=pairs: b.record(p, counts={(RECEIVED, ""): 1}))
    for n in range(RACE_ROUNDS):
        entries = a.lookup(f"PID-{n}")
        assert [(e.pseudonym, e.count) for e in entries] == [(f"ANON{n}", 2)]
    deliveries = Deliveries(a.engine.url.render_as_string(hide_password=False))
    try:
        assert deliveries.counters()[(RECEIVED, "")] == 2 * RACE_ROUNDS
    finally:
        deliveries.close()


def test_two_nodes_writing_many_pairs_in_opposite_orders_do_not_deadlock(two_nodes_stores):
    """Each writes its rows in one order (sorted): unsorted, PostgreSQL found a deadlock here."""
    a, b = two_nodes_stores
    for r in range(3):
        pairs = [Pseudonym("uid", f"1.2.{r}.{n}", f"2.25.{r}{n}") for n in range(1000)]
        both_at_once(lambda p=pairs: a.record(p), lambda p=pairs: b.record(list(reversed(p))))
    assert [e.count for e in a.export(["uid"])] == [2] * 3000


# --- counts kept when a flush fails ----------------------------------------------------------------


def test_map_counts_gathered_while_the_server_is_down_are_written_after(
        postgres_url, postgres_server):
    store = PseudonymStore(postgres_url)
    pair = Pseudonym("patient", "PID-1", "ANON1")
    try:
        store.record([pair])
        postgres_server.stop()
        store.record([pair])  # already in the map: counted in memory, nothing to wait for
        store.record([pair])
        with pytest.raises(StateError):
            store.flush()
        store.record([pair])
        postgres_server.start()
        store.flush()
        [entry] = store.lookup("PID-1")
        assert entry.count == 4
    finally:
        store.close()


def test_a_failed_statistics_flush_does_not_fail_the_instance(postgres_url, postgres_server,
                                                              monkeypatch):
    store = PseudonymStore(postgres_url)
    pair = Pseudonym("patient", "PID-1", "ANON1")
    try:
        store.record([pair])
        store.record([pair])  # a count waiting in memory
        postgres_server.stop()
        monkeypatch.setattr(state, "COUNT_FLUSH_SECONDS", -1.0)  # flush on every record
        store.record([pair])  # its pairs are durable already; the failed flush is not its error
        postgres_server.start()
        store.flush()
        assert store.lookup("PID-1")[0].count == 3
    finally:
        store.close()


def test_delivery_counters_gathered_while_the_server_is_down_are_written_after(
        postgres_url, postgres_server):
    deliveries = Deliveries(postgres_url)
    try:
        deliveries.count({(state.FORWARDED, "archive"): 1}, durable=True)
        postgres_server.stop()
        deliveries.count({(state.FORWARDED, "archive"): 2})
        with pytest.raises(StateError):
            deliveries.flush()
        deliveries.count({(state.FORWARDED, "archive"): 1})
        postgres_server.start()
        assert deliveries.counters() == {(state.FORWARDED, "archive"): 4}
    finally:
        deliveries.close()


def test_the_server_is_running_again_for_the_next_test(postgres_server: PgServer):
    assert postgres_server.running()


# --- the driver's SQL for the per-instance upserts ---------------------------------------------------


def test_pairs_and_counts_written_by_the_drivers_sql_read_back_as_sqlalchemys(any_url, monkeypatch):
    """The per-instance upserts run as plain SQL through the driver; what they write (times,
    counts added on a repeat, counters) reads back exactly as what SQLAlchemy's statements
    write, on SQLite and PostgreSQL."""
    seen = datetime(2026, 12, 5, 16, 0, 1, 234567, tzinfo=UTC)
    monkeypatch.setattr(state, "_now", lambda: seen)
    fast, compiled = PseudonymStore(any_url), PseudonymStore(any_url)
    compiled._driver = None  # SQLAlchemy's INSERT ... ON CONFLICT, as before
    try:
        assert fast._driver is not None
        for store, original in ((fast, "1.2.1"), (compiled, "1.2.2")):
            store.record([Pseudonym("uid", original, f"2.25.{original}")],
                         counts={(RECEIVED, ""): 1})
            store._known.clear()  # written again as new: the upsert adds to its count
            store.record([Pseudonym("uid", original, f"2.25.{original}")],
                         counts={(RECEIVED, ""): 1})
        entries = {e.original: e for e in fast.export(["uid"])}
        for original in ("1.2.1", "1.2.2"):
            entry = entries[original]
            assert (entry.pseudonym, entry.count) == (f"2.25.{original}", 2)
            assert entry.first_seen == seen and entry.last_seen == seen
        deliveries = Deliveries(any_url)
        try:
            assert deliveries.counters()[(RECEIVED, "")] == 4
        finally:
            deliveries.close()
    finally:
        fast.close()
        compiled.close()
