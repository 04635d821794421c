"""Per-destination profiles with two real archives (dcmtk storescp): one research archive with
[deidentify], one teaching/clinical-trial archive with a named profile, labels from a CSV and
the Clinical Trial attributes set. A study without a label row and a label naming the patient
are quarantined for the teaching archive only; the research archive gets every instance."""

from __future__ import annotations

from pathlib import Path

from netpeers import DestinationSpec, Instance, Peers, ct_template, requires_dcmtk, storescu, write_instance
from pydicom.uid import generate_uid

pytestmark = requires_dcmtk

PROFILES = """
[deidentify]
options = ["retain_long_modified_dates"]

[profiles.teaching]
options = ["retain_patient_characteristics"]

[profiles.teaching.edits]
remove = ["StudyDate", "SeriesDate"]

[profiles.teaching.edits.set]
PatientName = "{label.diagnosis}"
AccessionNumber = "{label.case}"
ClinicalTrialSponsorName = "Example Sponsor"
ClinicalTrialProtocolID = "PROTO-7"
ClinicalTrialSiteID = "SITE-3"
ClinicalTrialSubjectID = "{pseudonym.patient_id}"
ClinicalTrialTimePointID = "{pseudonym.study}"
ClinicalTrialProtocolName = "profile {profile}"

[labels]
file = "labels.csv"
key = "AccessionNumber"
missing = "quarantine"
"""


def _study(folder: Path, accession: str, patient_id: str, name: str, count: int) -> list[Instance]:
    template = ct_template(tiny=True)
    template.AccessionNumber = accession
    study, series = generate_uid(), generate_uid()
    return [write_instance(folder / accession, template, patient_id, name, study, series, k + 1)
            for k in range(count)]


def test_one_instance_reaches_two_archives_each_with_its_profile(peers: Peers, tmp_path: Path):
    research = peers.archive("research")
    teaching = peers.archive("teaching")
    gateway = peers.gateway([
        DestinationSpec("research", research.port),
        DestinationSpec("teaching", teaching.port, ae_title="TFS", extra='profile = "teaching"'),
    ], gateway_extra=PROFILES, start=False)
    gateway.workdir.mkdir(parents=True)
    (gateway.workdir / "labels.csv").write_text(
        "AccessionNumber,diagnosis,case\n"
        "ACC-1,Glioblastoma,TF-0001\n"
        "ACC-3,Smithson syndrome,TF-0003\n"  # the patient's own name, in a label
    )
    gateway.start()
    src = tmp_path / "src"
    labelled = _study(src, "ACC-1", "MRN-P1", "Doe^Jane", 2)
    unlabelled = _study(src, "ACC-2", "MRN-P2", "Roe^Richard", 1)
    leaking = _study(src, "ACC-3", "MRN-P3", "Smithson^Mary", 1)
    files = [i.path for i in labelled + unlabelled + leaking]

    sent = storescu(gateway.port, files)

    assert sent.returncode == 0, sent.output
    assert len(sent.acknowledged()) == len(files), sent.output  # the sender's answer as today
    report = gateway.wait_forwarded(len(files) + len(labelled))
    assert report["destinations"]["research"]["forwarded"] == len(files)
    assert report["destinations"]["teaching"]["forwarded"] == len(labelled)
    reasons = sorted(r["reason"] for r in gateway.quarantine())
    assert reasons == ["leak-detected", "missing-label"]

    research_copies = {str(ds.SOPInstanceUID): ds for ds in research.datasets()}
    teaching_copies = {str(ds.SOPInstanceUID): ds for ds in teaching.datasets()}
    assert len(research_copies) == len(files)
    assert set(teaching_copies) < set(research_copies)  # keyed UIDs the same for both profiles
    for uid, taught in teaching_copies.items():
        kept = research_copies[uid]
        assert taught.PatientName == "Glioblastoma"
        assert taught.AccessionNumber == "TF-0001"
        assert taught.ClinicalTrialSponsorName == "Example Sponsor"
        assert taught.ClinicalTrialProtocolID == "PROTO-7"
        assert taught.ClinicalTrialSiteID == "SITE-3"
        assert taught.ClinicalTrialSubjectID == kept.PatientID == taught.PatientID
        assert taught.ClinicalTrialProtocolName == "profile teaching"
        time_point = str(taught.ClinicalTrialTimePointID)
        assert len(time_point) == 8 and time_point.isdigit()
        assert "StudyDate" not in taught and "SeriesDate" not in taught
        assert taught.PatientSex == "O"  # retain_patient_characteristics (CT_small's value)
        assert taught.StudyInstanceUID == kept.StudyInstanceUID
        # The research copy: [deidentify] only, dates shifted, nothing set.
        assert "ClinicalTrialSponsorName" not in kept
        assert kept.PatientName != "Glioblastoma"
        assert kept.StudyDate and kept.StudyDate != "20040119"
        assert kept.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len({str(ds.ClinicalTrialTimePointID) for ds in teaching_copies.values()}) == 1
    for ds in [*research_copies.values(), *teaching_copies.values()]:
        assert "Smithson" not in str(ds.PatientName) and "Doe" not in str(ds.PatientName)

    # The map records which profile saw which patient.
    exported = gateway.cli("map", "export", "--kind", "profile")
    assert exported.returncode == 0, exported.stderr
    assert "teaching\\MRN-P1" in exported.stdout
    assert "default\\MRN-P2" in exported.stdout and "teaching\\MRN-P2" not in exported.stdout

    # Labelled afterwards, the quarantined study is released to the teaching archive only.
    with (gateway.workdir / "labels.csv").open("a") as labels:
        labels.write("ACC-2,Meningioma,TF-0002\n")
    (missing,) = [r["id"] for r in gateway.quarantine() if r["reason"] == "missing-label"]
    released = gateway.cli("quarantine", "release", missing)
    assert released.returncode == 0, released.stderr
    assert "destinations of profile teaching" in released.stdout
    report = gateway.wait_forwarded(len(files) + len(labelled) + len(unlabelled))
    assert report["destinations"]["research"]["forwarded"] == len(files)
    assert report["destinations"]["teaching"]["forwarded"] == len(labelled) + len(unlabelled)
    assert sorted(str(ds.PatientName) for ds in teaching.datasets()) == \
        ["Glioblastoma", "Glioblastoma", "Meningioma"]
    assert len(research.files()) == len(files)
    assert gateway.stop() == 0
    log = gateway.stderr()
    assert '"profile": "teaching"' in log and "dropped_fields" not in log
    for original in ("Smithson", "MRN-P", "ACC-", "Doe"):
        assert original not in log
