"""Patient data never reaches a log: instances full of planted identifiers go through ``serve``
and ``anonymize`` with debug logging on, and no planted value appears in any output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from netpeers import free_port
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from gateway.logs import keep_allowed_fields

PLANTED = {
    "name": "Quenneville^Zoraida",
    "id": "PID-99887766",
    "birth": "19450317",
    "accession": "ACC-55443322",
    "address": "17 Ramblewood Lane, Oxbury",
    "other_id": "OTHER-12121212",
    "physician": "Pennywhistle^Bartholomew",
    "mother": "Featherstonehaugh^Ottoline",
    "phone": "+44 1632 960981",
}
WAIT = 30.0


def planted_dataset(variant: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = PLANTED["name"]
    ds.PatientID = PLANTED["id"]
    ds.PatientBirthDate = PLANTED["birth"]
    ds.AccessionNumber = PLANTED["accession"]
    ds.PatientAddress = PLANTED["address"]
    ds.OtherPatientIDs = PLANTED["other_id"]
    ds.ReferringPhysicianName = PLANTED["physician"]
    ds.PatientMotherBirthName = PLANTED["mother"]
    ds.PatientTelephoneNumbers = PLANTED["phone"]
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = generate_uid()
    inner = Dataset()
    inner.PersonName = PLANTED["physician"]
    inner.PatientID = PLANTED["id"]
    item.ContentSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item])
    block = ds.private_block(0x0029, "PLANTED CREATOR", create=True)
    block.add_new(0x10, "LO", PLANTED["name"])
    if variant == "leak":
        ds.ConvolutionKernel = "Quenneville"  # not in Table E.1-1: kept, so the guard must stop it
    elif variant == "burned-in":
        ds.BurnedInAnnotation = "YES"
    return ds


def assert_no_planted_value(output: str) -> None:
    text = output.upper()
    for label, value in PLANTED.items():
        parts = [value] + [p for p in value.replace(",", "^").replace(" ", "^").split("^")
                           if len(p) > 4]
        for part in parts:
            assert part.upper() not in text, f"planted {label} ({part!r}) reached the output"


def test_allow_list_drops_unknown_fields_and_says_which() -> None:
    event = {"event": "received", "calling_ae": "PACS", "patient_name": PLANTED["name"]}
    kept = keep_allowed_fields(None, "info", event)
    assert kept == {"event": "received", "calling_ae": "PACS", "dropped_fields": ["patient_name"]}


def write_config(tmp: Path, port: int, archive_port: int) -> Path:
    config = tmp / "gw.toml"
    config.write_text(f"""
[gateway]
port = {port}
secret_file = "var/secret.key"
[logging]
level = "debug"
format = "json"
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
port = {archive_port}
[forward]
idle_release_seconds = 1
""")
    subprocess.run([sys.executable, "-m", "gateway.cli", "init-secret", "var/secret.key"],
                   cwd=tmp, check=True, capture_output=True, timeout=30)
    return config


def test_anonymize_with_debug_logging_prints_no_planted_value(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for variant in ("clean", "leak", "burned-in"):
        planted_dataset(variant).save_as(src / f"{variant}.dcm", enforce_file_format=True)
    write_config(tmp_path, free_port(), free_port())
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "anonymize", "--config", "gw.toml", "in", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1  # two of three quarantined
    assert "written:      1" in result.stdout
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {e["event"] for e in events} >= {"de-identified", "quarantined", "anonymize finished"}
    assert_no_planted_value(result.stdout + result.stderr)
    listing = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "quarantine", "list", "--config", "gw.toml",
         "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    records = json.loads(listing.stdout)
    assert sorted(r["reason"] for r in records) == ["burned-in-annotation", "leak-detected"]
    assert_no_planted_value(listing.stdout + listing.stderr)


@pytest.mark.skipif(shutil.which("storescp") is None, reason="needs dcmtk storescp")
def test_serve_with_debug_logging_prints_no_planted_value(tmp_path: Path) -> None:
    port, archive_port = free_port(), free_port()
    write_config(tmp_path, port, archive_port)
    (tmp_path / "archive").mkdir()
    log_file = (tmp_path / "gateway.log").open("wb")
    archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", "archive",
                                str(archive_port)], cwd=tmp_path)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", "gw.toml"], cwd=tmp_path,
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    try:
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        deadline = time.monotonic() + WAIT
        assoc = None
        while time.monotonic() < deadline:
            assoc = ae.associate("127.0.0.1", port, contexts=[build_context(CTImageStorage)],
                                 ae_title="DICOM_GW")
            if assoc.is_established:
                break
            time.sleep(0.3)
        assert assoc is not None and assoc.is_established
        statuses = [assoc.send_c_store(planted_dataset(v)).Status
                    for v in ("clean", "leak", "burned-in")]
        assoc.release()
        assert statuses == [0, 0, 0]  # quarantined ones are accepted by default
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any((tmp_path / "archive").iterdir()):
            time.sleep(0.2)
        assert len(list((tmp_path / "archive").iterdir())) == 1
    finally:
        gateway.terminate()
        assert gateway.wait(timeout=WAIT) == 0
        archive.terminate()
        archive.wait(timeout=WAIT)
        log_file.close()
    output = (tmp_path / "gateway.log").read_text()
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    for stage in ("received", "de-identified", "spooled", "forwarded", "quarantined"):
        assert stage in names, f"no {stage!r} event"
    assert not [e for e in events if "dropped_fields" in e]
    assert_no_planted_value(output)
