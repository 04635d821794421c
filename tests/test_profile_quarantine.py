"""An original that fails alike under several profiles is quarantined once, for all of them, and
its release sends one copy per profile, each to that profile's destinations only. In-process,
with the real spool, quarantine and SQLite state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.errors import LeakDetected
from gateway.net.acceptor import StoreRequest
from gateway.quarantine import Quarantine
from gateway.receive import SUCCESS, Receiver
from gateway.release import Releaser
from gateway.settings import SECRET_ENV, Settings, parse_settings
from gateway.spool import Spool, SpoolEntry, part10_dataset
from gateway.state import Deliveries, PseudonymStore

SECRET = b"s" * 32
ACCESSION = "ACC-77"


EDITS = {"teaching": {"PatientName": "{label.diagnosis}"},
         "trial": {"ClinicalTrialSubjectID": "{label.case}"}}


def _labels(tmp_path: Path, case: str = "TF-0042") -> None:
    (tmp_path / "labels.csv").write_text(
        f"AccessionNumber,diagnosis,case\n{ACCESSION},Glioblastoma,{case}\n")


def _settings(tmp_path: Path) -> Settings:
    labels = tmp_path / "labels.csv"
    if not labels.exists():
        labels.write_text("AccessionNumber,diagnosis,case\n")
    destinations = [{"name": "research", "ae_title": "R", "host": "127.0.0.1", "port": 11113}]
    destinations += [{"name": name, "ae_title": name.upper()[:16], "host": "127.0.0.1",
                      "port": 11114 + index, "profile": name}
                     for index, name in enumerate(EDITS)]
    return parse_settings({
        "gateway": {"data_dir": str(tmp_path / "var")},
        "profiles": {name: {"edits": {"set": edits}} for name, edits in EDITS.items()},
        "labels": {"file": str(labels), "key": "AccessionNumber", "missing": "quarantine"},
        "destinations": destinations,
    })


def _request(tmp_path: Path) -> StoreRequest:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber = ACCESSION
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return StoreRequest("MODALITY", "127.0.0.1", 40000, ds.SOPClassUID, ds.SOPInstanceUID,
                        str(ds.file_meta.TransferSyntaxUID),
                        bytearray(part10_dataset(path.read_bytes())))


@dataclass
class Node:
    settings: Settings
    receiver: Receiver
    spool: Spool
    quarantine: Quarantine
    store: PseudonymStore
    deliveries: Deliveries
    spooled: list[tuple[SpoolEntry, frozenset[str]]]
    folder: Path

    def releaser(self) -> Releaser:
        """As the release command makes it: the config read again (the labels file with it)."""
        return Releaser(_settings(self.folder), self.quarantine, self.store, self.deliveries)

    def destinations_of(self, entry_id: str) -> list[str]:
        """The destinations a spool entry is still for (those without a finished row)."""
        return sorted(d.name for d in self.settings.destinations
                      if entry_id not in self.deliveries.delivered(d.name))


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    monkeypatch.setenv(SECRET_ENV, SECRET.hex())  # serve and release share the key
    settings = _settings(tmp_path)
    settings.prepare_data_dir()
    spool = Spool(settings.spool_dir).prepare(owner=True)
    store, deliveries = PseudonymStore(settings.database_url), Deliveries(settings.database_url)
    quarantine = Quarantine(settings.quarantine_dir)
    spooled: list[tuple[SpoolEntry, frozenset[str]]] = []
    receiver = Receiver(settings, settings.policy(), settings.require_secret(), spool, store,
                        deliveries, quarantine, lambda entry, done: spooled.append((entry, done)))
    yield Node(settings, receiver, spool, quarantine, store, deliveries, spooled, tmp_path)
    store.close()
    deliveries.close()


def test_an_original_failing_alike_under_two_profiles_is_quarantined_once(node, tmp_path):
    assert node.receiver.handle_store(_request(tmp_path)) == SUCCESS  # the research copy went

    (record,) = node.quarantine.list()
    assert record.reason == "missing-label"
    assert record.context["profiles"] == ["teaching", "trial"]
    ((entry, done),) = node.spooled
    assert done == {"teaching", "trial"}  # the research copy is for research only


def test_its_release_sends_one_copy_per_profile_to_that_profiles_destinations(node, tmp_path):
    node.receiver.handle_store(_request(tmp_path))
    (record,) = node.quarantine.list()
    _labels(tmp_path)

    where = node.releaser().release(record)

    assert "profile teaching" in where and "profile trial" in where
    assert node.quarantine.list() == []
    released = _released(node)
    assert sorted(tuple(node.destinations_of(e.id)) for e in released) == [("teaching",), ("trial",)]
    copies = {tuple(node.destinations_of(e.id)): pydicom.dcmread(e.path) for e in released}
    assert copies[("teaching",)].PatientName == "Glioblastoma"
    assert "ClinicalTrialSubjectID" not in copies[("teaching",)]
    assert copies[("trial",)].ClinicalTrialSubjectID == "TF-0042"


def test_a_release_that_fails_for_one_profile_keeps_only_that_profile(node, tmp_path):
    node.receiver.handle_store(_request(tmp_path))
    (record,) = node.quarantine.list()
    _labels(tmp_path, case="CompressedSamples")  # the patient's name, for the trial copy only

    with pytest.raises(LeakDetected):
        node.releaser().release(record)

    (still,) = node.quarantine.list()
    assert still.context["profiles"] == ["trial"]  # the teaching copy is out: not sent twice
    assert still.context["release_attempts"] == 1
    assert [tuple(node.destinations_of(e.id)) for e in _released(node)] == [("teaching",)]

    _labels(tmp_path)
    node.releaser().release(still)

    assert node.quarantine.list() == []
    assert sorted(tuple(node.destinations_of(e.id)) for e in _released(node)) == \
        [("teaching",), ("trial",)]


def _released(node: Node) -> list[SpoolEntry]:
    """Spool entries that the receiver did not make (the releases')."""
    received = {entry.id for entry, _ in node.spooled}
    return [e for e in node.spool.entries() if e.id not in received]


def test_a_record_of_an_older_version_naming_one_profile_is_still_released(node, tmp_path):
    node.receiver.handle_store(_request(tmp_path))
    (record,) = node.quarantine.list()
    record.context.pop("profiles")
    record.context["profile"] = "trial"
    _labels(tmp_path)

    assert "profile trial" in node.releaser().release(record)

    (entry,) = _released(node)
    assert node.destinations_of(entry.id) == ["trial"]
