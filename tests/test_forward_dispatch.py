"""The dispatcher hands each spool entry to every destination's queue; a sender may already be
done with it (and report so, from its own thread) before the others have it queued."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from gateway.forward import Dispatcher
from gateway.forward_process import ENTRY, REPORT, REUSABLE, SPARES_PER_MESSAGE, Forwarding
from gateway.quarantine import Quarantine
from gateway.settings import Settings, parse_settings
from gateway.spool import Spool, SpoolEntry
from gateway.state import FORWARDED, SENT, Deliveries

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def test_an_entry_delivered_to_one_archive_while_it_is_queued_for_the_other(
        tmp_path: Path) -> None:
    settings = parse_settings({
        "gateway": {"data_dir": str(tmp_path / "var")},
        "destinations": [{"name": name, "ae_title": name.upper(), "port": 11112}
                         for name in ("first", "second")]})
    spool = Spool(settings.spool_dir).prepare(owner=True)
    deliveries = Deliveries(f"sqlite:///{tmp_path / 'gateway.db'}")
    dispatcher = Dispatcher(settings, spool, deliveries, Quarantine(settings.quarantine_dir))
    queued: list[str] = []

    def sent_at_once(name: str) -> None:
        real_submit = dispatcher.queues[name].submit

        def submit(entry: SpoolEntry) -> None:
            real_submit(entry)
            queued.append(name)
            if name == "first":  # its sender took it and the archive answered, at once
                dispatcher.delivered([(entry.id, SENT)], name)

        dispatcher.queues[name].submit = submit  # type: ignore[method-assign]

    for name in ("first", "second"):
        sent_at_once(name)
    entry = spool.put(b"\x08\x00\x16\x00UI\x00\x00", CT, EXPLICIT_LITTLE, "2.25.1")
    try:
        dispatcher.submit(entry, frozenset())  # used to fail: "Set changed size during iteration"
        assert queued == ["first", "second"]
        assert dispatcher.queues["second"].pending() == 1
        assert entry.path.exists()  # the second archive still owes it
        assert entry.id in deliveries.delivered("first")  # a restart does not send it there again
        dispatcher.delivered([(entry.id, SENT)], "second")
        assert not entry.path.exists() and entry.id not in deliveries.delivered("first")
    finally:
        deliveries.close()
        spool.close()


def forwarding_process(tmp_path: Path) -> tuple[Settings, Forwarding, Connection, Connection]:
    """A forwarding process's work, in this process, for one archive; and both ends of the
    connection it has to the serving process (``ours``, ``theirs``)."""
    settings = parse_settings({
        "gateway": {"data_dir": str(tmp_path / "var")},
        "destinations": [{"name": "archive", "ae_title": "ARCHIVE", "port": 11112}]})
    Spool(settings.spool_dir).prepare(owner=True).close()
    ours, theirs = multiprocessing.Pipe()
    return settings, Forwarding(settings, theirs), ours, theirs


def test_a_forwarding_process_that_fails_still_writes_its_counts(tmp_path: Path) -> None:
    """The serving process restarts a forwarding process that ended on a bug; what it had
    counted in memory (forwarded, dead-lettered) is written on the way out, not lost."""
    settings, forwarding, ours, theirs = forwarding_process(tmp_path)
    forwarding.deliveries.count({(FORWARDED, "archive"): 3})  # in memory, as senders count
    ours.send((ENTRY, None))  # not an (entry, done) pair: a bug in the process
    with pytest.raises(TypeError):
        forwarding.run()
    counted = Deliveries(settings.database_url)
    try:
        assert counted.counters()[(FORWARDED, "archive")] == 3
    finally:
        counted.close()
        ours.close()
        theirs.close()


def test_forwarded_files_go_back_to_the_serving_process_in_batches(tmp_path: Path) -> None:
    """Each forwarded file is handed back to be written over, sixteen to a message (one
    wake-up of the serving process, not one per instance); the rest go with the next report,
    so none is held back for long."""
    _, forwarding, ours, theirs = forwarding_process(tmp_path)
    try:
        spares = [tmp_path / f"spare-{n}.dcm" for n in range(SPARES_PER_MESSAGE + 3)]
        for spare in spares:
            forwarding._give_back(spare)
        assert ours.poll(5)
        assert ours.recv() == (REUSABLE, [str(s) for s in spares[:SPARES_PER_MESSAGE]])
        assert not ours.poll(0.1)  # three left: they wait for the report
        assert forwarding._report()
        assert ours.recv() == (REUSABLE, [str(s) for s in spares[SPARES_PER_MESSAGE:]])
        kind, _ = ours.recv()
        assert kind == REPORT
    finally:
        forwarding.deliveries.close()
        ours.close()
        theirs.close()
