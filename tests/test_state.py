"""Persistent state: the pseudonym map (with its audit trail) and the quarantine folder."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from gateway import state
from gateway.deid.engine import Pseudonym
from gateway.errors import InstanceError, LeakDetected, MalformedInstance, StateError
from gateway.quarantine import ORIGINAL, RECORD, Quarantine
from gateway.state import PseudonymStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path):
    s = PseudonymStore(f"sqlite:///{tmp_path / 'state' / 'gateway.db'}")
    yield s
    s.close()


# --- the pseudonym map ---------------------------------------------------------------------------


def test_database_file_is_created_private(tmp_path):
    old = os.umask(0o022)  # a permissive umask must not make the key world-readable
    try:
        db = tmp_path / "deep" / "folder" / "gateway.db"
        s = PseudonymStore(f"sqlite:///{db}")
        s.record([Pseudonym("patient", "PID-1", "ANON0000000000000001")])
        try:
            assert db.is_file()
            assert mode(db) == 0o600
            # SQLite's side files hold the same data while the store is open
            for side in (db.with_name("gateway.db-wal"), db.with_name("gateway.db-shm")):
                if side.exists():
                    assert mode(side) == 0o600, side.name
        finally:
            s.close()
    finally:
        os.umask(old)


def test_record_twice_counts_and_keeps_first_seen(store):
    pair = Pseudonym("patient", "PID-1", "ANONAAAAAAAAAAAAAAAA")
    store.record([pair])
    store.record([pair])
    [entry] = store.lookup("PID-1")
    assert (entry.kind, entry.original, entry.pseudonym, entry.count) == (
        "patient", "PID-1", "ANONAAAAAAAAAAAAAAAA", 2)
    assert entry.first_seen <= entry.last_seen


def test_record_batch_counts_repeats_within_the_batch(store):
    pair = Pseudonym("uid", "1.2.3", "2.25.99")
    other = Pseudonym("uid", "1.2.4", "2.25.100")
    store.record([pair, pair, other, pair])
    assert [(e.original, e.count) for e in store.export(["uid"])] == [("1.2.3", 3), ("1.2.4", 1)]


def test_memory_of_written_pairs_is_bounded_and_counts_stay_exact(store, monkeypatch):
    monkeypatch.setattr(state, "KNOWN_CACHE", 5)
    first = Pseudonym("uid", "1.2.3.0", "2.25.0")
    store.record([first])
    for n in range(1, 20):  # one new instance UID after another pushes the first out
        store.record([Pseudonym("uid", f"1.2.3.{n}", f"2.25.{n}")])
    assert len(store._known) <= 5
    store.record([first])  # forgotten, so written again: counted, not duplicated
    store.record([first])
    [entry] = store.lookup("1.2.3.0")
    assert (entry.pseudonym, entry.count) == ("2.25.0", 3)


def test_record_empty_batch_is_a_no_op(store):
    store.record([])
    assert list(store.export()) == []


def test_first_seen_stays_when_counted_later(store, monkeypatch):
    import gateway.state as pseudonyms

    start = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    monkeypatch.setattr(pseudonyms, "_now", lambda: start)
    store.record([Pseudonym("patient", "PID-1", "ANON1")])
    monkeypatch.setattr(pseudonyms, "_now", lambda: start + timedelta(days=3))
    store.record([Pseudonym("patient", "PID-1", "ANON1")])
    [entry] = store.lookup("ANON1")
    # SQLite gives the times back without their zone; they are UTC
    assert entry.first_seen.replace(tzinfo=UTC) == start
    assert entry.last_seen.replace(tzinfo=UTC) == start + timedelta(days=3)
    assert entry.count == 2


def test_same_original_of_different_kinds_are_separate(store):
    store.record([Pseudonym("patient", "X1", "ANON1"), Pseudonym("date_shift", "X1", "17")])
    assert [(e.kind, e.pseudonym) for e in store.lookup("X1")] == [
        ("date_shift", "17"), ("patient", "ANON1")]


def test_lookup_by_original_and_by_pseudonym(store):
    store.record([
        Pseudonym("patient", "PID-1", "ANON1111111111111111"),
        Pseudonym("patient", "PID-2", "ANON2222222222222222"),
        Pseudonym("uid", "1.2.840.1", "2.25.1"),
    ])
    by_original = store.lookup("PID-1")
    by_pseudonym = store.lookup("ANON1111111111111111")
    assert by_original == by_pseudonym
    assert [(e.kind, e.original, e.pseudonym) for e in by_original] == [
        ("patient", "PID-1", "ANON1111111111111111")]
    assert [e.original for e in store.lookup("2.25.1")] == ["1.2.840.1"]
    assert store.lookup("PID-3") == []
    assert store.lookup("PID") == []  # whole values only, no prefix matching


def test_lookup_and_export_are_audited(store):
    store.record([Pseudonym("patient", "PID-1", "ANON1")])
    assert store.audit_entries() == []  # recording is not a look-up
    store.lookup("PID-1", account="alice")
    store.lookup("ANON-NOT-THERE", account="bob")  # a miss is audited too
    assert [e.original for e in store.export(["patient"], account="carol")] == ["PID-1"]
    list(store.export(account="dave"))
    entries = store.audit_entries()
    assert [(action, query, account) for _, action, query, account in entries] == [
        ("map lookup", "PID-1", "alice"),
        ("map lookup", "ANON-NOT-THERE", "bob"),
        ("map export", "patient", "carol"),
        ("map export", "all", "dave"),
    ]
    times = [at for at, *_ in entries]
    assert times == sorted(times)


def test_audit_account_defaults_to_the_os_user(store):
    import getpass

    store.lookup("anything")
    [(_, action, query, account)] = store.audit_entries()
    assert (action, query, account) == ("map lookup", "anything", getpass.getuser())


def test_map_survives_reopening(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    first = PseudonymStore(url)
    first.record([Pseudonym("patient", "PID-1", "ANON1")])
    first.close()
    second = PseudonymStore(url)
    second.record([Pseudonym("patient", "PID-1", "ANON1")])
    assert [e.count for e in second.lookup("PID-1")] == [2]
    second.close()


def test_writes_queued_while_the_map_is_busy_go_in_one_transaction(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    store = PseudonymStore(url)
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    with state.WRITE_LOCK:  # the database is busy (another commit): the committer waits
        queued = [store.record_later([Pseudonym("uid", f"1.2.{n}", f"2.25.{n}")])
                  for n in range(10)]
        assert not any(p.done for p in queued)
    queued[-1].wait()
    assert all(p.done for p in queued)
    # The committer may have taken the first before it found the database busy; the nine
    # queued behind it go together.
    assert len(commits) <= 2
    store.close()
    reopened = PseudonymStore(url)
    assert [e.pseudonym for n in range(10) for e in reopened.lookup(f"1.2.{n}")] == [
        f"2.25.{n}" for n in range(10)]
    reopened.close()


def test_a_write_queued_before_close_is_written_by_close(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    store = PseudonymStore(url)
    with state.WRITE_LOCK:
        pending = store.record_later([Pseudonym("uid", "1.2.9", "2.25.9")])
        closing = threading.Thread(target=store.close)
        closing.start()
    closing.join(30)
    assert not closing.is_alive() and pending.done
    pending.wait()  # no error: it was written
    reopened = PseudonymStore(url)
    assert [e.pseudonym for e in reopened.lookup("1.2.9")] == ["2.25.9"]
    reopened.close()


def test_parallel_writers_all_become_durable(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    store = PseudonymStore(url)

    def write(worker: int) -> None:
        for n in range(40):
            store.record([Pseudonym("uid", f"1.{worker}.{n}", f"2.25.{worker}.{n}")],
                         {("received", ""): 1})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    store.close()
    reopened = PseudonymStore(url)
    assert all(reopened.lookup(f"1.{w}.{n}") for w in range(6) for n in range(40))
    reopened.close()


def test_a_write_after_close_is_refused(tmp_path):
    store = PseudonymStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    store.close()
    with pytest.raises(StateError):
        store.record([Pseudonym("uid", "1.2.3", "2.25.3")])


# --- quarantine ----------------------------------------------------------------------------------


PLANTED = "Doe^Planted^Value"


class _NamedOnly(InstanceError):
    """An instance error whose message names elements, like the engine's."""

    reason = "test-reason"


def planted_bytes() -> bytes:
    return b"\0" * 128 + b"DICM" + PLANTED.encode() + b"\x00\xff" * 50


def test_put_is_private_and_keeps_the_original_exactly(tmp_path):
    root = tmp_path / "var" / "quarantine"
    q = Quarantine(root)
    data = planted_bytes()
    error = _NamedOnly("identifying value survives in PatientName, OtherPatientNames")
    record = q.put(data, "/in/file.dcm", error, {"destination": "/out"})

    folder = root / record.id
    assert mode(root) == 0o700
    assert mode(folder) == 0o700
    assert mode(folder / ORIGINAL) == 0o600
    assert mode(folder / RECORD) == 0o600
    assert (folder / ORIGINAL).read_bytes() == data
    assert q.original(record.id) == data
    assert sorted(p.name for p in folder.iterdir()) == sorted([ORIGINAL, RECORD])
    assert [p.name for p in root.iterdir()] == [record.id]  # no staging folder left

    saved = json.loads((folder / RECORD).read_text())
    assert saved["id"] == record.id
    assert saved["source"] == "/in/file.dcm"
    assert saved["reason"] == "test-reason"
    assert saved["error_class"] == "_NamedOnly"
    assert saved["message"] == "identifying value survives in PatientName, OtherPatientNames"
    assert saved["size"] == len(data)
    assert saved["context"] == {"destination": "/out"}
    when = datetime.fromisoformat(saved["time"])
    assert when.tzinfo is not None
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)
    # the record tells why, by element names; it never repeats a value of the original
    assert PLANTED not in (folder / RECORD).read_text()
    assert "Planted" not in record.message


def test_put_reason_comes_from_the_error_class(tmp_path):
    q = Quarantine(tmp_path / "q")
    malformed = q.put(b"x", "a", MalformedInstance("SOPInstanceUID is missing"))
    leak = q.put(b"y", "b", LeakDetected("identifying value survives in PatientID"))
    other = q.put(b"z", "c", RuntimeError(f"bug while reading {PLANTED}"))
    assert (malformed.reason, malformed.error_class) == ("malformed", "MalformedInstance")
    assert (leak.reason, leak.error_class) == ("leak-detected", "LeakDetected")
    # an unexpected exception's text may hold anything: only its class is kept
    assert (other.reason, other.error_class, other.message) == (
        "error", "RuntimeError", "RuntimeError")


def test_list_get_remove(tmp_path):
    q = Quarantine(tmp_path / "q")
    assert q.list() == []  # no folder yet
    first = q.put(b"first", "src/1.dcm", MalformedInstance("truncated"))
    second = q.put(b"second", "src/2.dcm", _NamedOnly("PatientID"))
    assert [r.id for r in q.list()] == [first.id, second.id]  # oldest first
    assert q.get(second.id) == second
    assert q.get(first.id).source == "src/1.dcm"

    q.remove(first.id)
    assert [r.id for r in q.list()] == [second.id]
    assert not (tmp_path / "q" / first.id).exists()
    with pytest.raises(KeyError):
        q.get(first.id)
    with pytest.raises(KeyError):
        q.original(first.id)


@pytest.mark.parametrize("bad_id", ["../q", ".hidden", "a/b", "nope"])
def test_get_refuses_ids_outside_the_quarantine(tmp_path, bad_id):
    q = Quarantine(tmp_path / "q")
    q.put(b"x", "a", MalformedInstance("truncated"))
    with pytest.raises(KeyError):
        q.get(bad_id)
    with pytest.raises(KeyError):
        q.remove(bad_id)


def test_update_rewrites_the_record_only(tmp_path):
    from dataclasses import replace

    q = Quarantine(tmp_path / "q")
    record = q.put(b"orig", "a", _NamedOnly("PatientName"))
    q.update(replace(record, reason="unknown-patient", context={"release_attempts": 1}))
    again = q.get(record.id)
    assert again.reason == "unknown-patient"
    assert again.context == {"release_attempts": 1}
    assert q.original(record.id) == b"orig"
    folder = tmp_path / "q" / record.id
    assert sorted(p.name for p in folder.iterdir()) == sorted([ORIGINAL, RECORD])
    assert mode(folder / RECORD) == 0o600


def test_list_ignores_half_written_entries(tmp_path):
    q = Quarantine(tmp_path / "q")
    kept = q.put(b"x", "a", MalformedInstance("truncated"))
    (tmp_path / "q" / ".20240101T000000-abcdef.tmp").mkdir()
    (tmp_path / "q" / "stray-folder").mkdir()
    assert [r.id for r in q.list()] == [kept.id]
