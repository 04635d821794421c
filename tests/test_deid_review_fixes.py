"""Behaviour settled in review: trusted input with staff names, the standard's element notation in
a user's safe-private list, ages over 89 at any nesting level."""

from __future__ import annotations

from deid_helpers import base_dataset, policy, run
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.deid.private import parse_user_list


def test_trusted_input_keeps_its_staff_names_and_passes_unchanged() -> None:
    ds = base_dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.PatientName, ds.PatientID = "SUBJ^001", "SUBJ-001"
    ds.OperatorsName = "Radiographer^Anna"
    result = run(ds, policy(trust_deidentified=True))
    assert result.trusted
    assert result.dataset.OperatorsName == "Radiographer^Anna"
    assert result.dataset.PatientID == "SUBJ-001"


def test_a_users_list_may_use_the_standards_element_notation() -> None:
    listed = parse_user_list(["(0033,xx10) Some Creator", "0019 xx0C SIEMENS MR HEADER"])
    assert listed.allows("SOME CREATOR", 0x0033, 0x1210)
    assert listed.allows("SIEMENS MR HEADER", 0x0019, 0x100C)
    assert not listed.allows("SOME CREATOR", 0x0033, 0x1211)


def test_an_age_over_89_is_aggregated_inside_a_sequence_too() -> None:
    ds = base_dataset()
    item = Dataset()
    item.PatientAge = "095Y"
    ds.ReferencedSeriesSequence = Sequence([item])
    ds.PatientAge = "093Y"
    out = run(ds, policy("retain_patient_characteristics")).dataset
    assert out.PatientAge == "090Y"
    assert out.ReferencedSeriesSequence[0].PatientAge == "090Y"
