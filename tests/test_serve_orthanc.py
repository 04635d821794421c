"""A real PACS as the sender: Orthanc, configured with the gateway as a modality, is asked through
its REST API to send a study; the study reaches the archive (dcmtk storescp) de-identified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from netpeers import eventually, free_port, listening
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None or shutil.which("storescp") is None,
    reason="needs the Debian orthanc package and dcmtk",
)
WAIT = 60.0
PATIENT_NAME = "Orthancpatient^Wilhelmina"
PATIENT_ID = "ORTH-4711"


def http(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def answers(url: str) -> bool:
    try:
        http(url)
    except OSError:
        return False
    return True


def study_files(count: int) -> list[bytes]:
    """One patient, one study, one series of ``count`` CT instances."""
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, count + 1):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    return int(process.returncode)


@pytest.fixture()
def peers(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Orthanc (PACS) -> gateway -> storescp (archive); yields Orthanc's URL and the archive."""
    gateway_port, archive_port = free_port(), free_port()
    orthanc_dicom, orthanc_http = free_port(), free_port()
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    (tmp_path / "orthanc-db").mkdir()
    (tmp_path / "orthanc.json").write_text(json.dumps({
        "Name": "TEST_PACS",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "DicomAet": "ORTHANC",
        "DicomPort": orthanc_dicom,
        "HttpPort": orthanc_http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {"gateway": ["DICOM_GW", "127.0.0.1", gateway_port]},
    }))
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
port = {gateway_port}
secret_file = "var/secret.key"
allowed_calling_aes = ["ORTHANC@127.0.0.1"]
[[destinations]]
name = "research"
ae_title = "ARCHIVE"
port = {archive_port}
[forward]
idle_release_seconds = 1
""")
    subprocess.run([sys.executable, "-m", "gateway.cli", "init-secret", "var/secret.key"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=30)
    processes = [
        subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(archive_dir),
                          str(archive_port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", "gw.toml"],
                         cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    url = f"http://127.0.0.1:{orthanc_http}"
    try:
        assert eventually(lambda: answers(f"{url}/system") and listening(gateway_port)
                          and listening(archive_port), WAIT)
        yield url, archive_dir
    finally:
        codes = [stop(p) for p in reversed(processes)]
        assert codes[1] == 0  # the gateway stops cleanly on SIGTERM


def test_orthanc_sends_a_study_that_arrives_anonymized(peers: tuple[str, Path]) -> None:
    url, archive = peers
    originals = study_files(3)
    study_ids = {json.loads(http(f"{url}/instances", data))["ParentStudy"] for data in originals}
    (study_id,) = study_ids

    job = json.loads(http(f"{url}/modalities/gateway/store", study_id.encode()))
    assert job.get("FailedInstancesCount", 0) == 0

    assert eventually(lambda: len(list(archive.iterdir())) == 3, WAIT)
    received = [pydicom.dcmread(p) for p in sorted(archive.iterdir())]
    for ds, raw in zip(received, (p.read_bytes() for p in sorted(archive.iterdir())),
                       strict=True):
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientID).startswith("ANON") and ds.PatientName == ds.PatientID
        assert PATIENT_NAME.split("^")[0].encode() not in raw
        assert PATIENT_ID.encode() not in raw
    assert len({ds.StudyInstanceUID for ds in received}) == 1
    assert len({ds.SOPInstanceUID for ds in received}) == 3
    original_uids = {pydicom.dcmread(BytesIO(b)).SOPInstanceUID for b in originals}
    assert not original_uids & {ds.SOPInstanceUID for ds in received}
