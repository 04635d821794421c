"""Sequences and compound actions by the instance's IOD: what a research archive receives when
identifying values sit inside code sequences, observer sequences and SR content trees."""

from __future__ import annotations

import pytest
from deid_helpers import FAMILY, PATIENT_ID, UID_RE, base_dataset, policy, run
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
MARKERS = ("MARKA1", "MARKB2", "MARKC3", "MARKD4", "MARKE5", "MARKF6", "MARKG7", "1957", "99HOSP")


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def assert_no_marker(result) -> None:
    data = result.data
    for marker in MARKERS:
        assert marker.encode() not in data, marker


# --- compound actions by type ---------------------------------------------------------------------


def test_compound_actions_follow_the_type_in_the_ct_iod():
    ds = base_dataset()
    ds.InstitutionName = "MARKA1 HOSPITAL"  # X/Z/D, Type 3 in General Equipment: removed
    ds.ContentDate = "19570101"  # Z/D, Type 2C in General Image: emptied
    ds.StationName = "MARKB2"  # X/Z/D, Type 3: removed
    out = run(ds).dataset
    assert "InstitutionName" not in out
    assert "StationName" not in out
    assert out["ContentDate"].is_empty


def test_a_cleaned_request_sequence_keeps_its_words_and_loses_its_identifiers():
    ds = base_dataset()
    request = Dataset()
    request.ScheduledProcedureStepID = "MARKC3"  # X
    request.RequestedProcedureDescription = "CT CHEST MARKD4"  # C under Clean Descriptors
    request.ScheduledProcedureStepDescription = f"CHEST per {FAMILY}"
    ds.RequestAttributesSequence = Sequence([request])  # C under Clean Descriptors
    result = run(ds, policy("clean_descriptors"))
    assert_no_marker(result)
    item = result.dataset.RequestAttributesSequence[0]
    assert "ScheduledProcedureStepID" not in item
    assert item.RequestedProcedureDescription == "CT CHEST"
    assert FAMILY.upper() not in item.ScheduledProcedureStepDescription.upper()


def test_unknown_sop_class_keeps_present_attributes_present_without_their_values():
    ds = base_dataset()
    ds.SOPClassUID = "1.2.826.0.1.3680043.10.999.1"  # no IOD known for it
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.InstitutionName = "MARKA1 HOSPITAL"
    ds.StationName = "MARKB2"
    result = run(ds)
    assert result.dataset.InstitutionName == "ANONYMIZED"  # X/Z/D: a dummy, never removed
    assert result.dataset.StationName == "ANONYMIZED"
    assert_no_marker(result)


# --- dummy sequences ---------------------------------------------------------------------------------


def test_a_dummy_code_sequence_keeps_no_local_code_nor_meaning():
    ds = base_dataset()
    ds.SOPClassUID = "1.2.826.0.1.3680043.10.999.1"  # unknown IOD: X/Z/D gives a dummy sequence
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.InstitutionCodeSequence = Sequence([code("MARKA1", "99HOSP", f"{FAMILY} Memorial MARKB2")])
    result = run(ds)
    item = result.dataset.InstitutionCodeSequence[0]
    assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == (
        "ANONYMIZED", "99ANONYMIZED", "ANONYMIZED")
    assert_no_marker(result)


def test_operator_identification_keeps_its_structure_and_loses_every_value():
    ds = base_dataset()
    ds.SOPClassUID = "1.2.826.0.1.3680043.10.999.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    person = Dataset()
    person.PersonIdentificationCodeSequence = Sequence([code("MARKC3", "99HOSP", "MARKD4")])
    person.PersonAddress = "12 MARKE5 Street"
    person.PersonTelephoneNumbers = "MARKF6"
    person.InstitutionName = "MARKG7"
    ds.OperatorIdentificationSequence = Sequence([person])
    result = run(ds)
    assert_no_marker(result)
    out = result.dataset.OperatorIdentificationSequence[0]
    assert out.PersonIdentificationCodeSequence[0].CodeValue == "ANONYMIZED"


def test_a_standard_code_in_a_dummy_sequence_keeps_its_value_and_the_standards_meaning():
    ds = base_dataset()
    ds.SOPClassUID = "1.2.826.0.1.3680043.10.999.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.InstitutionCodeSequence = Sequence([code("121071", "DCM", "MARKA1")])  # DCM 121071: Finding
    item = run(ds).dataset.InstitutionCodeSequence[0]
    assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == ("121071", "DCM", "Finding")


# --- SR content trees --------------------------------------------------------------------------------


def _sr_item(value_type: str, name: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([name])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _sr_document() -> Dataset:
    ds = base_dataset()
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.Modality = "SR"
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([code("126000", "DCM", "Imaging Measurement Report")])
    observer = Dataset()
    observer.VerifyingObserverName = f"{FAMILY}^MARKA1"
    observer.VerifyingOrganization = "MARKB2 Clinic"
    observer.VerificationDateTime = "19570304101010"
    ds.VerifyingObserverSequence = Sequence([observer])
    deepest = _sr_item("TEXT", code("121071", "DCM", "MARKC3"), TextValue=f"seen by Dr {FAMILY} MARKD4")
    local = _sr_item("CODE", code("L1", "99HOSP", "local MARKE5"),
                     ConceptCodeSequence=Sequence([code("L2", "99HOSP", "MARKF6")]))
    when = _sr_item("DATETIME", code("111526", "DCM", "DateTime Started"), DateTime="19570304121212")
    who = _sr_item("PNAME", code("121008", "DCM", "Person Observer Name"), PersonName="MARKG7^Jo")
    ref = _sr_item("UIDREF", code("121012", "DCM", "Device Observer UID"), UID="1.2.826.0.1.3680043.10.999.7")
    level3 = _sr_item("CONTAINER", code("111028", "DCM", "Image Library"),
                      ContentSequence=Sequence([deepest, local]))
    level2 = _sr_item("CONTAINER", code("121070", "DCM", "Findings"),
                      ContentSequence=Sequence([level3, when, who, ref]))
    ds.ContentSequence = Sequence([level2])
    return ds


def test_sr_under_the_basic_profile_keeps_a_valid_tree_and_no_original_value():
    result = run(_sr_document())
    assert_no_marker(result)
    data = result.data
    assert FAMILY.upper().encode() not in data.upper()
    assert b"1.2.826.0.1.3680043.10.999.7" not in data
    out = result.dataset
    level2 = out.ContentSequence[0]
    level3 = level2.ContentSequence[0]
    deepest, local = level3.ContentSequence
    assert (deepest.ValueType, deepest.TextValue) == ("TEXT", "ANONYMIZED")
    # Standard concept names stay, with the standard's meaning; local codes do not.
    assert deepest.ConceptNameCodeSequence[0].CodeValue == "121071"
    assert deepest.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    assert local.ConceptCodeSequence[0].CodingSchemeDesignator == "99ANONYMIZED"
    when, who, ref = level2.ContentSequence[1:]
    assert who.PersonName == "ANONYMIZED"
    assert when.DateTime != "19570304121212"
    assert UID_RE.match(ref.UID)
    observer = out.VerifyingObserverSequence[0]
    assert observer.VerifyingObserverName == "ANONYMIZED"


def test_sr_under_clean_structured_content_keeps_clean_words_of_text_items():
    ds = _sr_document()
    ds.ContentSequence[0].ContentSequence[0].ContentSequence[0].TextValue = (
        f"no acute findings MARKD4 {FAMILY}")
    result = run(ds, policy("clean_structured_content"))
    assert_no_marker(result)
    text = result.dataset.ContentSequence[0].ContentSequence[0].ContentSequence[0].TextValue
    assert "ACUTE" in text.upper() and "FINDINGS" in text.upper()


def test_sr_dates_move_with_the_patient_under_modified_dates():
    ds = _sr_document()
    result = run(ds, policy("retain_long_modified_dates"))
    when = result.dataset.ContentSequence[0].ContentSequence[1]
    assert when.DateTime != "19570304121212" and when.DateTime[:2] == "19"


@pytest.mark.parametrize("option", ["retain_uids", "retain_long_full_dates"])
def test_options_do_not_bring_back_text_in_a_dummy_tree(option):
    result = run(_sr_document(), policy(option))
    for marker in ("MARKA1", "MARKB2", "MARKC3", "MARKD4", "MARKE5", "MARKF6", "MARKG7"):
        assert marker.encode() not in result.data, marker
    assert PATIENT_ID.encode() not in result.data


def test_shipped_code_meanings_are_those_of_the_installed_pydicom_dictionary():
    import importlib.util
    import sys

    from deid_helpers import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location(
        "build_code_meanings", PROJECT_ROOT / "scripts" / "build_code_meanings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_code_meanings"] = module
    spec.loader.exec_module(module)
    shipped = (PROJECT_ROOT / "gateway" / "deid" / "data" / "code_meanings.tsv").read_text("utf-8")
    body = [line for line in shipped.splitlines() if not line.startswith("#")]
    assert body == [f"{s}\t{v}\t{m}" for s, v, m in module.rows()]
