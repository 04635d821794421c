"""What the running gateway turns away, with real peers: callers not on the allowed list (at
association), instances it cannot de-identify (quarantine; the sender hears success or the
failure status, as configured), and instances the archive refuses for good (dead letters,
and their release once the archive takes them)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from netpeers import (
    DestinationSpec,
    Peers,
    ct_template,
    requires_dcmtk,
    store_file_as_is,
    storescu,
    write_compressed,
    write_study,
)
from pydicom.uid import generate_uid

pytestmark = requires_dcmtk


def write_without_sop_instance_uid(folder: Path) -> Path:
    """A CT file whose data set lacks SOP Instance UID (the file meta still names one, so a
    sender can address the C-STORE)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_template()
    ds.PatientName, ds.PatientID = "Broken^Instance", "MRN-BROKEN-1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.SOPInstanceUID
    path = folder / "no-sop-instance-uid.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert "SOPInstanceUID" not in pydicom.dcmread(path)
    return path


@pytest.mark.parametrize("on_failure", ["accept", "refuse"])
def test_unknown_caller_rejected_and_malformed_instance_quarantined(
    peers: Peers, tmp_path: Path, on_failure: str
) -> None:
    archive = peers.archive()
    gateway = peers.gateway(
        [DestinationSpec("archive", archive.port)],
        gateway_extra=f'allowed_calling_aes = ["MODALITY"]\non_deidentify_failure = "{on_failure}"',
    )
    good = write_study(tmp_path / "src", "MRN-GOOD-1", "Good^Instance", series=1, per_series=1)

    # a calling AE title not on the list: rejected at association, nothing stored
    sent = storescu(gateway.port, good.paths, calling="INTRUDER")
    assert sent.returncode != 0, sent.output
    assert "Association Rejected" in sent.output, sent.output
    assert "Calling AE Title Not Recognized" in sent.output, sent.output
    assert not sent.acknowledged()
    assert gateway.answers_echo()
    assert gateway.status()["received"] == 0

    # a data set without SOP Instance UID: quarantined with the calling AE as its source
    broken = write_without_sop_instance_uid(tmp_path / "broken")
    assert "missing SOP class (or instance)" in storescu(gateway.port, [broken]).output
    status = store_file_as_is(gateway.port, broken)  # storescu won't send it; pynetdicom will
    assert status == (0x0000 if on_failure == "accept" else 0xC001)  # MalformedInstance.status
    assert gateway.answers_echo()
    records = gateway.quarantine()
    assert len(records) == 1, records
    record = records[0]
    assert record["reason"] == "malformed"
    assert record["source"].startswith("MODALITY@127.0.0.1:"), record
    assert "Broken" not in record["message"] and "MRN-BROKEN" not in record["message"]
    report = gateway.wait_status(10, "quarantined 1", lambda r: r["quarantined"] == 1)
    assert report["received"] == 0

    # and the gateway carries on: a good instance goes through
    sent = storescu(gateway.port, good.paths)
    assert sent.returncode == 0, sent.output
    gateway.wait_forwarded(1)
    assert len(archive.files()) == 1
    assert gateway.answers_echo()
    assert gateway.stop() == 0


def test_instance_the_archive_refuses_becomes_a_dead_letter(peers: Peers, tmp_path: Path) -> None:
    archive = peers.archive(accept_all=False)  # uncompressed transfer syntaxes only
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra="convert = false")  # else the JPEG 2000 is decoded
    study = write_study(tmp_path / "src", "MRN-DEAD-1", "Dead^Letter", series=1, per_series=3)
    j2k = write_compressed(tmp_path / "src")

    sent = storescu(gateway.port, [*study.paths, j2k.path])
    assert sent.returncode == 0, sent.output
    assert len(sent.acknowledged()) == 4, sent.output

    report = gateway.wait_status(
        30, "3 forwarded and 1 dead letter",
        lambda r: r["pending"] == 0 and r["forwarded"] == 3 and r["dead_lettered"] == 1,
    )
    assert report["destinations"]["archive"]["dead_lettered"] == 1
    assert report["quarantined"] == 0  # de-identification went fine; delivery did not

    records = gateway.quarantine()
    assert len(records) == 1, records
    record = records[0]
    assert record["reason"] == "dead-letter"
    assert record["context"]["destination"] == "archive"
    assert record["context"]["dead_letter"] is True
    assert record["source"] == "forward to archive"
    # what waits in quarantine is the de-identified instance, not the original
    # stored under its pseudonymous SOP Instance UID, as the record says
    kept_path = gateway.workdir / "var" / "quarantine" / record["id"] / record["file"]
    assert record["file"] == f"{pydicom.dcmread(kept_path).SOPInstanceUID}.dcm"
    assert b"CompressedSamples" not in kept_path.read_bytes()
    assert pydicom.dcmread(kept_path).PatientIdentityRemoved == "YES"

    received = archive.datasets()
    assert len(received) == 3
    assert {ds.SOPClassUID for ds in received} == {"1.2.840.10008.5.1.4.1.1.2"}  # CT only
    assert gateway.answers_echo()

    # the archive learns JPEG 2000; released, the dead letter goes to it as it is (same UIDs:
    # not de-identified a second time), picked up by the running gateway's spool rescan
    dead_uid = pydicom.dcmread(kept_path).SOPInstanceUID
    archive.stop()
    archive.accept_all = True
    archive.start()
    released = gateway.cli("quarantine", "release", record["id"])
    assert released.returncode == 0, released.stderr
    assert "spool (destination archive)" in released.stdout
    assert gateway.quarantine() == []
    report = gateway.wait_forwarded(4, timeout=45)  # rescan: entries older than 10 s, every 2 s
    assert report["destinations"]["archive"]["forwarded"] == 4
    late = [ds for ds in archive.datasets() if ds.SOPInstanceUID == dead_uid]
    assert len(late) == 1
    assert str(late[0].file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.91"
    assert late[0].PatientIdentityRemoved == "YES"
    assert gateway.stop() == 0


def write_contradicting(folder: Path, attribute: str) -> Path:
    """A CT file whose file meta (what a sender puts in its C-STORE-RQ) names another SOP class
    or instance than its data set does."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_template()
    ds.PatientName, ds.PatientID = "Contradicting^Instance", "MRN-CONTRA-1"
    if attribute == "SOPClassUID":
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    else:
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"contradicting-{attribute}.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path


def test_a_data_set_that_contradicts_its_c_store_request_is_refused(peers: Peers, tmp_path: Path) -> None:
    """PS3.4 B.2.3 0xA900: the sender would otherwise be told an instance it never sent is stored."""
    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    for attribute in ("SOPClassUID", "SOPInstanceUID"):
        path = write_contradicting(tmp_path / "src", attribute)
        assert store_file_as_is(gateway.port, path) == 0xA900, attribute
    assert gateway.quarantine() == []
    assert gateway.status()["received"] == 0
    good = write_study(tmp_path / "good", "MRN-GOOD-2", "Good^Instance", series=1, per_series=1)
    assert storescu(gateway.port, good.paths).returncode == 0
    gateway.wait_forwarded(1)
    assert len(archive.files()) == 1
    assert "refused: the data set does not match its C-STORE request" in gateway.stderr()
