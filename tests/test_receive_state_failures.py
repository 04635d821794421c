"""The receiver never lets an instance it answered with a failure status reach the forwarder:
the spool file becomes an entry only after the pseudonym map (and the filter rows) are durable.
In-process, with the real spool and SQLite state; the database failure is injected where the
commit happens (a real outage is exercised against PostgreSQL elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.errors import StateError
from gateway.net.acceptor import StoreRequest
from gateway.quarantine import Quarantine
from gateway.receive import OUT_OF_RESOURCES, SUCCESS, Receiver
from gateway.settings import Settings, parse_settings
from gateway.spool import Spool, SpoolEntry, part10_dataset
from gateway.state import Deliveries, PseudonymStore

SECRET = b"s" * 32


def ct_request() -> StoreRequest:
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    return StoreRequest("MODALITY", "127.0.0.1", 40000, ds.SOPClassUID, ds.SOPInstanceUID,
                        str(ds.file_meta.TransferSyntaxUID),
                        bytearray(part10_dataset(path.read_bytes())))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Receiver, Spool, PseudonymStore, list[SpoolEntry]]:
    settings: Settings = parse_settings({
        "gateway": {"data_dir": str(tmp_path / "var")},
        "destinations": [{"name": "a", "ae_title": "A", "host": "127.0.0.1", "port": 11113},
                         {"name": "mr-only", "ae_title": "B", "host": "127.0.0.1", "port": 11114,
                          "modalities": ["MR"]}],
    })
    settings.prepare_data_dir()
    spool = Spool(settings.spool_dir).prepare(owner=True)
    store = PseudonymStore(settings.database_url)
    deliveries = Deliveries(settings.database_url)
    spooled: list[SpoolEntry] = []
    receiver = Receiver(settings, settings.policy(), SECRET, spool, store, deliveries,
                        Quarantine(settings.quarantine_dir), lambda entry, _: spooled.append(entry))
    yield receiver, spool, store, spooled
    store.close()
    deliveries.close()


def test_a_map_commit_that_fails_leaves_nothing_to_forward(setup, monkeypatch) -> None:
    receiver, spool, store, spooled = setup

    def database_down(*_args: object, **_kwargs: object) -> None:
        raise StateError("cannot write the pseudonym map (OperationalError)")

    monkeypatch.setattr(store, "_write", database_down)
    assert receiver.handle_store(ct_request()) == OUT_OF_RESOURCES
    assert spool.ids() == [] and spooled == []
    assert list(spool.staging.iterdir()) == []  # the staged file is gone too

    monkeypatch.undo()
    assert receiver.handle_store(ct_request()) == SUCCESS
    assert len(spool.ids()) == 1 and [e.id for e in spooled] == spool.ids()


def test_filter_rows_that_cannot_be_written_leave_nothing_to_forward(setup, monkeypatch) -> None:
    """A CT is filtered from the MR-only destination: without that row a restart would send it
    there, so failing to write it is a failure for the sender, and nothing is spooled."""
    receiver, spool, _, spooled = setup

    def database_down(*_args: object, **_kwargs: object) -> None:
        raise StateError("cannot write delivery state (OperationalError)")

    monkeypatch.setattr(receiver.deliveries, "record", database_down)
    assert receiver.handle_store(ct_request()) == OUT_OF_RESOURCES
    assert spool.ids() == [] and spooled == []


def test_staged_files_are_invisible_until_published(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").prepare(owner=True)
    staged = spool.stage(b"\x00" * 200, "1.2.3", "1.2.840.10008.1.2.1")
    assert spool.ids() == []
    entry = staged.publish()
    assert spool.ids() == [entry.id] and entry.path.read_bytes() == b"\x00" * 200
    dropped = spool.stage(b"\x01" * 10, "1.2.3", "1.2.840.10008.1.2.1")
    dropped.discard()
    assert spool.ids() == [entry.id] and not dropped.temp.exists()
