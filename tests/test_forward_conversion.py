"""The forwarder converts: an archive that takes only implicit VR little endian, or only
uncompressed syntaxes, receives instances converted (audited, logged), a deflated instance
reaches an archive that takes deflated intact (padded to even length, PS3.5 A.5, even when it
was spooled unpadded), and what cannot be converted is a dead letter whose reason says what the
archive accepted of what was proposed. Then the requestor's negotiation itself: several
transfer syntaxes per context, several contexts per SOP class, the archive's choice recorded.

Real peers on 127.0.0.1 (dcmtk storescp and dcmdump, a pynetdicom SCP), every wait bounded.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy
import pydicom
import pytest
from netpeers import (
    DCMTK_ENV,
    LOOPBACK,
    DestinationSpec,
    GatewayProcess,
    Peers,
    PynetdicomArchive,
    pydicom_file,
    recv_pdu,
    requires_dcmtk,
    storescu,
    wait_for,
    write_compressed,
    write_study,
)
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from gateway.deid.engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.net.pdu import (
    A_ASSOCIATE_RQ,
    ContextResult,
    encode_associate_ac,
    parse_associate_rq,
)
from gateway.net.requestor import RequestorConfig, associate
from gateway.receive import part10_header
from gateway.spool import Spool

pytestmark = requires_dcmtk
WAIT = 10.0
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ELE, ILE, EBE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG2000 = "1.2.840.10008.1.2.4.91"
MPEG2 = "1.2.840.10008.1.2.4.100"


@pytest.fixture()
def peers(tmp_path: Path) -> Iterator[Peers]:
    started = Peers(tmp_path)
    yield started
    started.close()


# --- helpers -------------------------------------------------------------------------------------


def dcmdump_reads(path: Path) -> bool:
    """dcmdump reads the whole file (pixel data included) without an error or a warning."""
    result = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True,
                            timeout=WAIT, env=DCMTK_ENV)
    return result.returncode == 0 and "E:" not in result.stderr and "W:" not in result.stderr


def audit_rows(gateway: GatewayProcess) -> list[tuple[str, str]]:
    with sqlite3.connect(gateway.workdir / "var" / "gateway.db") as db:
        return list(db.execute("SELECT action, query FROM audit ORDER BY id"))


def log_events(gateway: GatewayProcess, event: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in gateway.stderr().splitlines()
            if line.startswith("{") and f'"event": "{event}"' in line]


def spool_before_start(gateway: GatewayProcess, data: bytes, ds: Dataset, syntax: str) -> None:
    """Put ``data`` (``ds`` encoded in ``syntax``) into the stopped gateway's spool, as an entry
    written by an earlier version would be."""
    sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    spool = Spool(gateway.workdir / "var" / "spool").prepare()
    spool.put(part10_header(sop_class, sop_instance, syntax) + data, sop_class, syntax,
              sop_instance)


def fresh_dataset(name: str) -> Dataset:
    """A pydicom test file's data set with a new SOP Instance UID."""
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = generate_uid()
    return ds


def encoded(ds: Dataset, syntax: str = ELE) -> bytes:
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = syntax == ILE, syntax != EBE
    write_dataset(out, ds)
    return out.getvalue()


def odd_length_deflated() -> tuple[bytes, Dataset]:
    """A CT deflated to an odd number of bytes and left unpadded (the old engine's output)."""
    ds = fresh_dataset("CT_small.dcm")
    for extra in range(64):
        ds.ImageComments = "x" * (2 * extra)
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        deflated = compressor.compress(encoded(ds)) + compressor.flush()
        if len(deflated) % 2:
            return deflated, ds
    raise AssertionError("no odd-length deflated stream found")


# --- conversion through a serving gateway --------------------------------------------------------


def test_an_implicit_only_archive_receives_explicit_instances_converted_and_audited(
    peers: Peers, tmp_path: Path
) -> None:
    archive = peers.archive(accept_all=False, options=("+xi",))  # implicit VR LE only
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    study = write_study(tmp_path / "src", "MRN-IMPL-1", "Implicit^Only", series=1, per_series=3)
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in study.paths} == {ELE}
    sent = storescu(gateway.port, study.paths)
    assert sent.returncode == 0 and len(sent.acknowledged()) == 3, sent.output

    report = gateway.wait_forwarded(3, timeout=60)
    assert report["dead_lettered"] == 0
    files = archive.files()
    assert len(files) == 3
    originals = {int(pydicom.dcmread(p).InstanceNumber): pydicom.dcmread(p) for p in study.paths}
    received_uids = set()
    for path in files:
        assert dcmdump_reads(path)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ILE
        assert ds.PatientIdentityRemoved == "YES"
        original = originals[int(ds.InstanceNumber)]
        numpy.testing.assert_array_equal(ds.pixel_array, original.pixel_array)  # not cleaned
        received_uids.add(str(ds.SOPInstanceUID))

    expected = {f"destination=archive from=Explicit VR Little Endian to=Implicit VR Little "
                f"Endian sop_instance_uid={uid}" for uid in received_uids}
    rows = [query for action, query in audit_rows(gateway) if action == "transfer syntax converted"]
    assert sorted(rows) == sorted(expected)
    converted = log_events(gateway, "converted")
    assert {(e["from_syntax"], e["to_syntax"], e["destination"]) for e in converted} == {
        ("Explicit VR Little Endian", "Implicit VR Little Endian", "archive")}
    assert {e["sop_instance_uid"] for e in converted} == received_uids  # pseudonyms only
    assert not any(i.sop_uid in gateway.stderr() for i in study.instances)
    assert gateway.stop() == 0


def test_an_uncompressed_only_archive_receives_jpeg_2000_and_jpeg_baseline_decompressed(
    peers: Peers, tmp_path: Path
) -> None:
    archive = peers.archive(accept_all=False)  # uncompressed transfer syntaxes only
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    j2k = write_compressed(tmp_path / "src", "JPEG2000.dcm")
    jpeg = write_compressed(tmp_path / "src", "SC_rgb_jpeg_dcmtk.dcm")  # YBR_FULL, baseline
    for instance in (j2k, jpeg):  # one compressed syntax per storescu run
        sent = storescu(gateway.port, [instance.path])
        assert sent.returncode == 0 and len(sent.acknowledged()) == 1, sent.output

    report = gateway.wait_forwarded(2, timeout=60)
    assert report["dead_lettered"] == 0
    assert len(archive.files()) == 2
    by_rows = {pydicom.dcmread(p).Rows: p for p in archive.files()}
    for instance in (j2k, jpeg):
        original = pydicom.dcmread(instance.path)
        path = by_rows[original.Rows]
        assert dcmdump_reads(path)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ELE  # the first native syntax offered
        numpy.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
        assert ds.get("LossyImageCompression") == original.get("LossyImageCompression")
        if original.SamplesPerPixel == 3:
            assert original.PhotometricInterpretation == "YBR_FULL"
            assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    pairs = sorted((e["from_syntax"], e["to_syntax"]) for e in log_events(gateway, "converted"))
    assert pairs == [("JPEG 2000 Image Compression", "Explicit VR Little Endian"),
                     ("JPEG Baseline (Process 1)", "Explicit VR Little Endian")]
    assert len(audit_rows(gateway)) >= 2
    assert gateway.stop() == 0


def test_a_deflated_instance_reaches_an_archive_that_takes_deflated_intact(
    peers: Peers, tmp_path: Path
) -> None:
    """One spooled unpadded (odd length) by an earlier version, one received deflated now."""
    archive = peers.archive(accept_all=False, options=("+xd",))  # prefers deflated
    gateway = peers.gateway([DestinationSpec("archive", archive.port)], start=False)
    odd, odd_ds = odd_length_deflated()
    spool_before_start(gateway, odd, odd_ds, DEFLATED)
    gateway.start()
    deflated = write_compressed(tmp_path / "src", "image_dfl.dcm")
    assert pydicom.dcmread(deflated.path).file_meta.TransferSyntaxUID == DEFLATED
    sent = storescu(gateway.port, [deflated.path], extra=["-xd"])
    assert sent.returncode == 0 and len(sent.acknowledged()) == 1, sent.output

    report = gateway.wait_forwarded(2, timeout=60)
    assert report["dead_lettered"] == 0
    files = archive.files()
    assert len(files) == 2
    originals = [odd_ds, pydicom.dcmread(deflated.path)]
    for path in files:
        assert dcmdump_reads(path), path
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == DEFLATED  # sent deflated, not converted
        (original,) = [o for o in originals if o.Rows == ds.Rows]
        numpy.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
    assert log_events(gateway, "converted") == []
    assert "storescp: W:" not in archive.log_text() and "E: " not in archive.log_text()
    assert gateway.stop() == 0


def test_what_cannot_be_converted_is_a_dead_letter_saying_what_the_archive_took(
    peers: Peers, tmp_path: Path
) -> None:
    """No decoder (MPEG-2), a decoder that fails on the data, and, for comparison, one that
    converts; all to an archive that takes uncompressed syntaxes only."""
    archive = peers.archive(accept_all=False)
    gateway = peers.gateway([DestinationSpec("archive", archive.port)], start=False)
    ct = fresh_dataset("CT_small.dcm")
    spool_before_start(gateway, encoded(ct), ct, MPEG2)  # never decoded: the label is enough
    broken = fresh_dataset("JPEG2000-embedded-sequence-delimiter.dcm")  # pydicom cannot decode
    spool_before_start(gateway, encoded(broken), broken, JPEG2000)
    gateway.start()
    good = write_compressed(tmp_path / "src", "JPEG2000.dcm")
    assert storescu(gateway.port, [good.path]).returncode == 0

    gateway.wait_status(60, "1 forwarded and 2 dead letters", lambda r: r["pending"] == 0
                        and r["dead_lettered"] == 2 and r["forwarded"] == 1)
    assert len(archive.files()) == 1
    messages = sorted(record["message"] for record in gateway.quarantine())
    assert messages == [
        "archive accepts none of: MPEG2 Main Profile / Main Level for CTImageStorage",
        "archive takes it only converted: conversion from JPEG 2000 Image Compression to "
        "Explicit VR Little Endian failed (RuntimeError)",
    ]
    assert gateway.stop() == 0


def test_an_archive_without_the_sop_class_makes_a_dead_letter_saying_so(
    peers: Peers, tmp_path: Path
) -> None:
    archive = PynetdicomArchive([MR], [ELE, ILE]).start()
    try:
        gateway = peers.gateway([DestinationSpec("archive", archive.port)])
        study = write_study(tmp_path / "src", "MRN-NOSOP-1", "No^Class", series=1, per_series=1)
        assert storescu(gateway.port, study.paths).returncode == 0
        gateway.wait_status(60, "a dead letter",
                            lambda r: r["pending"] == 0 and r["dead_lettered"] == 1)
        (record,) = gateway.quarantine()
        assert record["message"] == "archive does not accept this SOP class (CTImageStorage)"
        assert archive.stored == []
        assert gateway.stop() == 0
    finally:
        archive.stop()


# --- the requestor's negotiation -----------------------------------------------------------------


def requestor_config() -> RequestorConfig:
    return RequestorConfig("DICOM_GW", acse_timeout=WAIT, dimse_timeout=WAIT,
                           network_timeout=WAIT, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                           implementation_version_name=IMPLEMENTATION_VERSION_NAME)


def test_the_archive_chooses_among_several_syntaxes_and_its_choice_is_recorded(
    peers: Peers
) -> None:
    archive = peers.archive(accept_all=False, options=("+xi",))
    assoc = associate(requestor_config(), LOOPBACK, archive.port, "ARCHIVE",
                      [(CT, (JPEG2000,)), (CT, (ELE, ILE)), (CT, ELE), (MR, (EBE, ILE))])
    try:
        assert [(cx.sop_class_uid, cx.proposed, cx.result, cx.transfer_syntax)
                for cx in assoc.contexts] == [
            (CT, (JPEG2000,), 4, ""), (CT, (ELE, ILE), 0, ILE), (CT, (ELE,), 4, ""),
            (MR, (EBE, ILE), 0, ILE)]
        assert assoc.accepted == {(CT, ILE), (MR, ILE)}
        assert assoc.accepts(CT, ILE) and not assoc.accepts(CT, ELE)
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        assert assoc.store(CT, str(ds.SOPInstanceUID), ILE, encoded(ds, ILE)) == 0x0000
    finally:
        assoc.release()
    wait_for(lambda: len(archive.files()) == 1, WAIT, "the stored instance")


def test_an_accepted_syntax_we_did_not_propose_counts_as_rejected() -> None:
    """An archive that answers 'accepted' with big endian for a context that proposed explicit
    little endian only: we cannot send in it, so the context is not usable."""
    listener = socket.create_server((LOOPBACK, 0))
    port = int(listener.getsockname()[1])

    def answer() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(WAIT)
            kind, body = recv_pdu(sock)
            assert kind == A_ASSOCIATE_RQ
            rq = parse_associate_rq(body)
            results = [ContextResult(cx.id, 0, EBE) for cx in rq.contexts]
            sock.sendall(encode_associate_ac(rq, "ARCHIVE", results, 16384, "1.2.3", "RAW"))
            with pytest.raises(OSError):  # whatever comes (release), until we close
                while True:
                    if not sock.recv(1024):
                        raise OSError

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    try:
        assoc = associate(requestor_config(), LOOPBACK, port, "ARCHIVE", [(CT, ELE)])
        (context,) = assoc.contexts
        assert context.result == 0 and not context.accepted and context.transfer_syntax == ""
        assert assoc.accepted == frozenset() and not assoc.accepts(CT, EBE)
        assoc.abort()
    finally:
        server.join(WAIT)
        listener.close()
    assert not server.is_alive()

