"""A multi-series study through the running gateway to a real archive (dcmtk storescp).

Several storescu associations, three of them at once, each carrying instances of every series:
every instance arrives once, de-identified, with UIDs that agree across associations and
across a restart of the gateway; a JPEG 2000 instance keeps its transfer syntax and its
encapsulated pixel bytes.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import pydicom
from netpeers import (
    DestinationSpec,
    GatewayProcess,
    Peers,
    chunks,
    requires_dcmtk,
    storescu,
    write_compressed,
    write_instance,
    write_study,
)

pytestmark = requires_dcmtk

PSEUDONYM = re.compile(r"ANON[0-9A-F]{16}")
PATIENT_A = ("MRN-ALPHA-4711", "Testperson^Alpha")
PATIENT_B = ("MRN-BRAVO-0815", "Otherperson^Bravo")
J2K_SYNTAX = "1.2.840.10008.1.2.4.91"


def uid_map(gateway: GatewayProcess) -> dict[str, str]:
    """original -> pseudonym for every UID and patient the gateway has mapped (map export)."""
    result = gateway.cli("map", "export", "--kind", "uid", "--kind", "patient")
    assert result.returncode == 0, result.stderr
    return {row["original"]: row["pseudonym"] for row in csv.DictReader(io.StringIO(result.stdout))}


def test_study_in_parallel_associations_and_across_a_restart(peers: Peers, tmp_path: Path) -> None:
    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])

    src = tmp_path / "src"
    study_a = write_study(src, *PATIENT_A, series=3, per_series=4)
    study_b = write_study(src, *PATIENT_B, series=1, per_series=2)
    j2k = write_compressed(src)
    instances = [*study_a.instances, *study_b.instances]

    # three associations at once, each with instances of every series; then one more with the
    # JPEG 2000 instance (storescu proposes its syntax with -xw)
    runs = [peers.send_in_background(gateway.port, [i.path for i in part], f"storescu-{n}.log")
            for n, part in enumerate(chunks(instances, 3))]
    results = [run.wait() for run in runs]
    results.append(storescu(gateway.port, [j2k.path]))
    for sent in results:
        assert sent.returncode == 0, sent.output
        assert sorted(sent.acknowledged()) == sorted(sent.files), sent.output
    instances.append(j2k)

    report = gateway.wait_forwarded(len(instances))
    assert report["received"] == len(instances)
    assert report["forwarded"] == len(instances)
    assert report["quarantined"] == 0 and report["dead_lettered"] == 0

    received = {p: pydicom.dcmread(p) for p in archive.files()}
    sop_counts = Counter(str(ds.SOPInstanceUID) for ds in received.values())
    assert len(received) == len(instances), "each instance arrives exactly once"
    assert len(sop_counts) == len(instances) and set(sop_counts.values()) == {1}

    mapping = uid_map(gateway)
    by_sop = {str(ds.SOPInstanceUID): (p, ds) for p, ds in received.items()}
    originals = {value for i in instances
                 for value in (i.patient_id, i.patient_name, i.study_uid, i.series_uid, i.sop_uid)}
    for instance in instances:
        new_sop = mapping[instance.sop_uid]
        assert new_sop != instance.sop_uid
        path, ds = by_sop[new_sop]
        pseudonym = mapping[instance.patient_id]
        assert PSEUDONYM.fullmatch(pseudonym)
        assert ds.PatientID == pseudonym
        assert str(ds.PatientName) == pseudonym
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID == mapping[instance.study_uid] != instance.study_uid
        assert ds.SeriesInstanceUID == mapping[instance.series_uid] != instance.series_uid
        data = path.read_bytes()
        leaked = [value for value in originals if value.encode() in data]
        assert not leaked, f"{path.name} still holds original values {leaked}"
        assert b"Testperson" not in data and b"Otherperson" not in data
        assert b"CompressedSamples" not in data  # the JPEG 2000 file's original patient name

    # UIDs agree across associations: one new series UID per original series, one study UID
    for original_series, members in study_a.by_series().items():
        series_uids = {by_sop[mapping[i.sop_uid]][1].SeriesInstanceUID for i in members}
        assert series_uids == {mapping[original_series]}
    new_series = {mapping[s] for s in study_a.by_series()}
    assert len(new_series) == 3
    study_uids = {by_sop[mapping[i.sop_uid]][1].StudyInstanceUID for i in study_a.instances}
    assert study_uids == {mapping[study_a.instances[0].study_uid]}
    assert mapping[PATIENT_A[0]] != mapping[PATIENT_B[0]]

    # the compressed instance arrives in its own transfer syntax with the same pixel bytes
    path, ds = by_sop[mapping[j2k.sop_uid]]
    original = pydicom.dcmread(j2k.path)
    assert str(ds.file_meta.TransferSyntaxUID) == J2K_SYNTAX
    assert ds["PixelData"].is_undefined_length  # still encapsulated
    assert ds.PixelData == original.PixelData

    # across a restart: another instance of the first series gets the same new study/series
    assert gateway.stop() == 0
    gateway.start()
    first = study_a.instances[0]
    late = write_instance(tmp_path / "late", pydicom.dcmread(first.path), first.patient_id,
                          first.patient_name, first.study_uid, first.series_uid, number=99)
    sent = storescu(gateway.port, [late.path])
    assert sent.returncode == 0, sent.output
    gateway.wait_forwarded(len(instances) + 1)
    new_files = set(archive.files()) - set(received)
    assert len(new_files) == 1
    ds = pydicom.dcmread(new_files.pop())
    assert ds.SOPInstanceUID not in by_sop
    assert ds.StudyInstanceUID == mapping[first.study_uid]
    assert ds.SeriesInstanceUID == mapping[first.series_uid]
    assert ds.PatientID == mapping[first.patient_id]
    assert gateway.stop() == 0
    logs = (gateway.workdir / "gateway.out").read_text() + gateway.stderr()
    assert "stopped" in logs
    leaked = [value for value in originals if value in logs]
    assert not leaked, f"the gateway logged original values {leaked}"
