"""Several gateway nodes on one PostgreSQL, with real peers and a real PostgreSQL server: one
pseudonym per patient whichever node sees the patient first, and a database outage while
senders send loses nothing answered Success, forwards nothing answered with a failure, and is
survived by every thread of every node (new patients and a quarantine release after it go
through without restarting anything)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from netpeers import (
    SECRET_HEX,
    DestinationSpec,
    GatewayProcess,
    Peers,
    acknowledged,
    requires_dcmtk,
    storescu,
    wait_for,
    write_compressed,
    write_study,
)

from gateway.deid.uids import keyed_uid

if TYPE_CHECKING:
    from pgserver import PgServer

pytestmark = requires_dcmtk
pytest_plugins = ["pgserver"]
SECRET = bytes.fromhex(SECRET_HEX)


def node(peers: Peers, name: str, url: str, archive_port: int, extra: str = "") -> GatewayProcess:
    return peers.gateway([DestinationSpec("archive", archive_port)], name=name,
                         gateway_extra=f'database_url = "{url}"\n{extra}')


def archived_uids(archive_files: list[Path]) -> Counter[str]:
    return Counter(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in archive_files)


def test_two_nodes_give_one_pseudonym_per_patient_seen_first_on_either(
    peers: Peers, tmp_path: Path, postgres_url: str
) -> None:
    archive = peers.archive()
    first = node(peers, "node-a", postgres_url, archive.port)
    second = node(peers, "node-b", postgres_url, archive.port)
    studies = [write_study(tmp_path / f"p{i}", f"MRN-MULTI-{i}", f"Multi^Patient{i}", series=1,
                           per_series=2, tiny=True) for i in range(12)]
    # each patient's first instance to one node and its second to the other, at the same time
    to_first = peers.send_in_background(first.port, [s.paths[0] for s in studies], "a.log")
    to_second = peers.send_in_background(second.port, [s.paths[1] for s in studies], "b.log")
    assert to_first.wait().returncode == 0 and to_second.wait().returncode == 0
    wait_for(lambda: len(archive.files()) == 24, 60, "24 instances at the archive")

    by_patient: dict[str, set[str]] = {}
    for ds in archive.datasets():
        by_patient.setdefault(str(ds.PatientID), set()).add(str(ds.StudyInstanceUID))
    assert len(by_patient) == 12  # one pseudonym per patient, never two
    assert all(len(studies_seen) == 1 for studies_seen in by_patient.values())
    for study in studies[:3]:
        assert first.pseudonym_of(study.instances[0].patient_id) == second.pseudonym_of(
            study.instances[0].patient_id)
    for gateway in (first, second):
        report = gateway.status_sections()
        assert report["cluster"]["received"] == 24  # both nodes' counts, in the shared database
        assert report["cluster"]["map"]["patient"] == 12
        assert report["node"]["running"] and report["node"]["pending"] == 0


def test_a_database_outage_loses_nothing_and_forwards_nothing_refused(
    peers: Peers, tmp_path: Path, postgres_url: str, postgres_server: PgServer
) -> None:
    archive = peers.archive(accept_all=False)  # uncompressed only: a JPEG 2000 is a dead letter
    gateway = peers.gateway(
        [DestinationSpec("archive", archive.port)], name="node",
        gateway_extra=f'database_url = "{postgres_url}"', forward_extra="convert = false")
    before = write_study(tmp_path / "before", "MRN-OUT-1", "Outage^Before", series=1,
                         per_series=3, tiny=True)
    j2k = write_compressed(tmp_path / "before")
    assert storescu(gateway.port, [*before.paths, j2k.path]).returncode == 0
    wait_for(lambda: len(archive.files()) == 3, 30, "the first study at the archive")
    records = wait_for(lambda: gateway.quarantine() or None, 60, "the dead letter")
    assert records[0]["context"]["dead_letter"] is True
    dead_path = gateway.workdir / "var" / "quarantine" / records[0]["id"] / records[0]["file"]
    dead_uid = str(pydicom.dcmread(dead_path, stop_before_pixels=True).SOPInstanceUID)

    postgres_server.stop()
    during = write_study(tmp_path / "during", "MRN-OUT-2", "Outage^During", series=1,
                         per_series=4, tiny=True)
    sent = storescu(gateway.port, during.paths)
    assert acknowledged(sent.output) == [], sent.output  # 0xA700 for each: the sender keeps them
    assert gateway.answers_echo()
    time.sleep(3)  # rescans and state flushes fail meanwhile (rescan_seconds = 2)
    unhealthy = gateway.status_sections()
    assert unhealthy["cluster"]["database"] == "unreachable"
    assert unhealthy["node"]["running"] and not unhealthy["node"]["healthy"]
    assert not unhealthy["node"]["checks"]["database"]["ok"]
    postgres_server.start()

    # The sender sends three of the four again; the fourth it never sends again.
    retried = storescu(gateway.port, during.paths[:3])
    assert len(acknowledged(retried.output)) == 3, retried.output
    after = write_study(tmp_path / "after", "MRN-OUT-3", "Outage^After", series=1, per_series=2,
                        tiny=True)
    assert storescu(gateway.port, after.paths).returncode == 0  # new patients: new map rows
    archive.stop()
    archive.accept_all = True
    archive.start()
    released = gateway.cli("quarantine", "release", records[0]["id"])
    assert released.returncode == 0, released.stderr

    # 3 before + 3 retried + 2 after + the released dead letter (rescan: entries older than 10 s)
    wait_for(lambda: len(archive.files()) >= 9, 60, "the retried, new and released instances")
    time.sleep(3)  # a rescan period more: anything else that would arrive, arrives now
    seen = archived_uids(archive.files())
    assert all(count == 1 for count in seen.values()), seen  # exactly once
    expected = [i.sop_uid for s in (before, after) for i in s.instances]
    expected += [i.sop_uid for i in during.instances[:3]]
    assert set(seen) == {keyed_uid(SECRET, uid) for uid in expected} | {dead_uid}
    assert keyed_uid(SECRET, during.instances[3].sop_uid) not in seen  # answered 0xA700
    wait_for(lambda: gateway.status_sections()["node"]["healthy"], 15, "the node healthy again")
    assert gateway.status()["pending"] == 0
