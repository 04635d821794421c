"""PS3.15 E.3 options: what each option keeps or cleans, row by row from its table column, and
how the output says which options were applied."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pytest
from deid_helpers import (
    DIRTY_TEXT,
    FAMILY,
    GIVEN,
    OTHER_SECRET,
    PATIENT_ID,
    PATIENT_NAME,
    SECRET,
    UID_RE,
    WHERES,
    add_container,
    assert_action,
    base_dataset,
    container,
    da,
    documented_action,
    exact_rows,
    iod_type,
    option_keys,
    output_container,
    plant,
    plant_vr,
    policy,
    row_id,
    row_tag,
    run,
    table,
    unplantable,
)
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from gateway.deid import dates
from gateway.deid.engine import Pseudonym
from gateway.deid.private import SafePrivateList, parse_user_list, standard_safe_private
from gateway.deid.profile import build_profile, option_catalogue
from gateway.errors import ConfigError, LeakDetected

TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
CODED_VRS = {"AE", "CS", "UR"}


def _option_rows(code: str) -> list[tuple[str, dict]]:
    return [
        (key, row)
        for key in option_keys()
        for row in exact_rows()
        if row["options"][key] == code
    ]


def _pair_id(pair) -> str:
    key, row = pair
    return f"{key}-{row_id(row)}"


KEPT = _option_rows("K")
CLEANED = _option_rows("C")


def _reference_date(row, where: str) -> str:
    """A date of the same patient in CT_small, shifted alongside the planted one."""
    return "SeriesDate" if where == "top" and row_id(row) == "StudyDate" else "StudyDate"


@pytest.mark.parametrize("where", WHERES)
@pytest.mark.parametrize("pair", KEPT, ids=_pair_id)
def test_option_keeps_the_rows_its_column_marks_k(pair, where):
    key, row = pair
    if reason := unplantable(row, where):
        pytest.skip(reason)
    ds = base_dataset()
    planted = plant(ds, row, where)
    out = run(ds, policy(key)).dataset
    assert_action("K", row, where, out, planted, uids_retained=key == "retain_uids")


@pytest.mark.parametrize("where", WHERES)
@pytest.mark.parametrize("pair", CLEANED, ids=_pair_id)
def test_option_cleans_the_rows_its_column_marks_c(pair, where):
    key, row = pair
    if reason := unplantable(row, where):
        pytest.skip(reason)
    tag, vr = row_tag(row), plant_vr(row)
    ds = base_dataset()
    planted = plant(ds, row, where, value=DIRTY_TEXT if vr in TEXT_VRS else None)
    out = run(ds, policy(key)).dataset
    holder = output_container(out, row, where)
    if vr == "SQ":  # a cleaned sequence keeps its items, themselves de-identified
        assert_action("K", row, where, out, planted)
    elif vr in ("DA", "DT", "TM"):
        assert key == "retain_long_modified_dates"
        shift = _moment_shift(PATIENT_ID)
        got = holder[tag].value
        if vr == "TM":
            assert got == dates.shift_tm(planted, shift.seconds) != planted
        elif vr == "DT":
            assert got == dates.shift_moment(planted, shift.days, shift.seconds) != planted
        else:  # moved by whole days, one more when its paired time passes midnight
            assert got in (dates.shift_da(planted, shift.days), dates.shift_da(planted, shift.days + 1))
    elif row_id(row) == "TimezoneOffsetFromUTC":
        assert holder[tag].value == "+0000"  # an offset would name the place
    elif vr == "AE":
        # A device keeps one keyed name, the same in every instance, with nothing of the site.
        assert re.fullmatch(r"DEV[0-9A-F]{12}", holder[tag].value)
        assert holder[tag].value == output_container(run(ds, policy(key)).dataset, row, where)[tag].value
    elif vr in CODED_VRS:
        # A code cannot hold a scrubbed text: one naming someone becomes a dummy.
        assert str(holder[tag].value) == "ANONYMIZED"
    elif vr == "PN":
        assert str(holder[tag].value) == "ANONYMIZED"
    elif vr in TEXT_VRS:
        got = str(holder[tag].value)
        assert FAMILY.upper() not in got.upper()
        assert got.startswith("LEFT")  # the word of the clean vocabulary stays
    else:
        # A value the engine cannot clean (binary, or a tag pydicom does not know and so reads
        # as UN) must not pass unchanged: it gets the basic profile's action instead.
        assert_action(documented_action(row["basic"], kind=iod_type(row, where)), row, where, out, planted)


def test_every_option_column_is_exercised():
    keys_with_rows = {key for key, _ in KEPT + CLEANED}
    assert keys_with_rows == set(option_keys()) - {"retain_safe_private"}  # private: its own tests
    assert len(KEPT) > 250 and len(CLEANED) > 250


# --- marking -------------------------------------------------------------------------------------


def _codes(ds: Dataset) -> list[tuple[str, str]]:
    return [(i.CodeValue, i.CodingSchemeDesignator) for i in ds.DeidentificationMethodCodeSequence]


def test_basic_profile_marks_the_output():
    out = run(base_dataset()).dataset
    assert out.PatientIdentityRemoved == "YES"
    assert _codes(out) == [("113100", "DCM")]
    assert out.DeidentificationMethodCodeSequence[0].CodeMeaning == (
        "Basic Application Confidentiality Profile"
    )
    methods = list(out.DeidentificationMethod)
    assert methods[0] == f"PS3.15 {table()['edition']} Basic Application Confidentiality Profile"
    assert all(len(m) <= 64 for m in methods)
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


@pytest.mark.parametrize("key", option_keys())
def test_each_option_is_named_in_the_output(key):
    option = option_catalogue()[key]
    out = run(base_dataset(), policy(key)).dataset
    assert out.PatientIdentityRemoved == "YES"
    assert _codes(out) == [("113100", "DCM"), (option.code, "DCM")]
    assert out.DeidentificationMethodCodeSequence[1].CodeMeaning == option.name
    assert option.name[:64] in list(out.DeidentificationMethod)
    expected = {"retain_long_modified_dates": "MODIFIED", "retain_long_full_dates": "UNMODIFIED"}
    assert out.LongitudinalTemporalInformationModified == expected.get(key, "REMOVED")


def test_all_compatible_options_are_listed_in_order():
    keys = [k for k in option_keys() if k != "retain_long_full_dates"]
    out = run(base_dataset(), policy(*keys)).dataset
    catalogue = option_catalogue()
    assert _codes(out) == [("113100", "DCM")] + [(catalogue[k].code, "DCM") for k in keys]


def test_contradictory_date_options_are_refused():
    with pytest.raises(ConfigError):
        policy("retain_long_full_dates", "retain_long_modified_dates")


# --- longitudinal dates ------------------------------------------------------------------------


def _instance(pid: str, study_date: str, sop_suffix: str) -> Dataset:
    ds = base_dataset()
    ds.PatientID = pid
    ds.SOPInstanceUID = ds.SOPInstanceUID + sop_suffix
    ds.StudyDate = study_date
    ds.ContentDate = study_date
    return ds


def _moment_shift(pid: str, secret: bytes = SECRET, low: int = 1, high: int = 365) -> timedelta:
    """The keyed shift of every date and time of a patient: whole days back, then seconds on."""
    return timedelta(days=dates.date_shift_days(secret, pid, low, high),
                     seconds=dates.time_shift_seconds(secret, pid))


def _moment(out: Dataset, prefix: str) -> datetime:
    return datetime.strptime(out[f"{prefix}Date"].value + out[f"{prefix}Time"].value[:6], "%Y%m%d%H%M%S")


def test_modified_dates_shift_every_date_and_time_of_a_patient_by_one_keyed_shift():
    pol = policy("retain_long_modified_dates")
    a = _instance(PATIENT_ID, "20200101", ".1")
    a.StudyTime = "120000"
    a.ContentDate, a.ContentTime = "20200115", "120000"
    a.AcquisitionDateTime = "20200115083000.5+0100"
    a.InstanceCreationTime = "083000"
    result = run(a, pol)
    out = result.dataset
    shift = _moment_shift(PATIENT_ID)
    assert timedelta(days=-365) <= shift <= timedelta(days=0)
    assert _moment(out, "Study") == datetime(2020, 1, 1, 12) + shift
    assert _moment(out, "Content") - _moment(out, "Study") == timedelta(days=14)  # interval kept
    # Date and time move together; the UTC offset, which names a place, is dropped.
    assert out.AcquisitionDateTime == (datetime(2020, 1, 15, 8, 30) + shift).strftime("%Y%m%d%H%M%S.5")
    assert out.InstanceCreationTime == (datetime(2020, 1, 15, 8, 30) + shift).strftime("%H%M%S")
    assert out.InstanceCreationTime != "083000"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    days = dates.date_shift_days(SECRET, PATIENT_ID, 1, 365)
    assert Pseudonym("date_shift", PATIENT_ID, str(days)) in result.pseudonyms

    # A later study of the same patient, another instance: the same shift.
    b = _instance(PATIENT_ID, "20210301", ".2")
    b.StudyTime = "120000"
    later = run(b, pol).dataset
    assert _moment(later, "Study") == datetime(2021, 3, 1, 12) + shift

    # Another patient, and the same patient under another secret: another shift.
    c = _instance("PID-000001", "20200101", ".3")
    c.StudyTime = "120000"
    assert _moment(run(c, pol).dataset, "Study") != datetime(2020, 1, 1, 12) + shift
    a.StudyTime = "120000"
    assert _moment(run(a, pol, secret=OTHER_SECRET).dataset, "Study") != datetime(2020, 1, 1, 12) + shift


def test_modified_dates_carry_a_time_shifted_past_midnight_into_its_date():
    ds = _instance(PATIENT_ID, "20200101", ".1")
    seconds = dates.time_shift_seconds(SECRET, PATIENT_ID)
    late = (datetime(2020, 1, 1) + timedelta(seconds=86399 - seconds // 2)).strftime("%H%M%S")
    ds.StudyTime = late
    out = run(ds, policy("retain_long_modified_dates")).dataset
    expected = datetime.strptime("20200101" + late, "%Y%m%d%H%M%S") + _moment_shift(PATIENT_ID)
    assert _moment(out, "Study") == expected


def test_modified_dates_shift_stays_within_the_configured_range():
    pol = policy("retain_long_modified_dates", date_shift_min_days=30, date_shift_max_days=31)
    for n in range(8):
        ds = _instance(f"PID-{n:04d}", "20200301", f".{n}")
        del ds.StudyTime  # a date alone moves by whole days
        out = run(ds, pol).dataset
        assert (date(2020, 3, 1) - da(out.StudyDate)).days in (30, 31)


def _unlisted(vr: str) -> Tag:
    profile = build_profile()
    for tag, entry in sorted(DicomDictionary.items()):
        vr_, vm, _name, retired, _keyword = entry
        if vr_ == vr and vm == "1" and not retired and profile.action_for(tag) is None:
            return Tag(tag)
    raise AssertionError(f"no unlisted {vr} attribute")


def test_modified_dates_shift_unlisted_and_kept_dates_too():
    ds = base_dataset()
    unlisted = _unlisted("DA")
    ds[unlisted] = DataElement(unlisted, "DA", "20040119")
    ds.DateOfLastCalibration = "20040119"  # K under Retain Device Identity
    del ds.StudyTime  # dates without a time move by whole days
    out = run(ds, policy("retain_long_modified_dates", "retain_device_identity")).dataset
    assert out[unlisted].value == out.StudyDate  # StudyDate was 20040119 too
    assert out.DateOfLastCalibration == out.StudyDate
    assert out.StudyDate != "20040119"


def test_modified_dates_replace_a_date_that_cannot_be_shifted():
    ds = base_dataset()
    ds.StudyDate = "2004"
    ds.AcquisitionDateTime = "200401"
    out = run(ds, policy("retain_long_modified_dates")).dataset
    assert out.StudyDate == "19000101"
    assert out.AcquisitionDateTime == "19000101000000"


def test_full_dates_keep_dates_and_say_so():
    ds = base_dataset()
    dates = {k: ds[k].value for k in ("StudyDate", "SeriesDate", "ContentDate", "StudyTime")}
    result = run(ds, policy("retain_long_full_dates"))
    for keyword, value in dates.items():
        assert result.dataset[keyword].value == value
    assert result.dataset.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [p for p in result.pseudonyms if p.kind == "date_shift"] == []


def test_without_a_date_option_dates_are_emptied_or_dummied():
    ds = base_dataset()
    ds.PatientBirthDate = "19500304"
    ds.LastMenstrualDate = "20031201"
    out = run(ds).dataset
    assert out["StudyDate"].is_empty  # Z
    assert out["PatientBirthDate"].is_empty  # Z
    # The compound actions follow the CT Image IOD: AcquisitionDate (X/Z) and SeriesDate (X/D)
    # are Type 3 there, so removed; ContentDate (Z/D) is Type 2C, so emptied.
    assert "AcquisitionDate" not in out
    assert "SeriesDate" not in out
    assert out["ContentDate"].is_empty
    assert "LastMenstrualDate" not in out  # X


# --- descriptors -----------------------------------------------------------------------------


def test_clean_descriptors_keeps_only_words_known_not_to_identify():
    ds = base_dataset()
    ds.StudyDescription = f"CT HEAD {FAMILY} {GIVEN.lower()} w/o contrast"
    ds.ImageComments = f"ref {PATIENT_ID}, see prior, per Dr Hartley 555-0199"
    ds.SeriesDescription = "AXIAL 5MM"
    ds.ProtocolName = "NEUROVASC Hartley"
    out = run(ds, policy("clean_descriptors")).dataset
    assert out.StudyDescription == "CT HEAD w/o contrast"
    assert out.ImageComments == "prior, per Dr"  # the name, ID and phone number are gone
    assert out.SeriesDescription == "AXIAL 5MM"
    assert out.ProtocolName == ""  # nothing in it is known to be safe

    site_words = run(ds, policy("clean_descriptors", clean_words=frozenset({"NEUROVASC"}))).dataset
    assert site_words.ProtocolName == "NEUROVASC"


def test_descriptors_are_removed_without_the_option():
    ds = base_dataset()
    ds.SeriesDescription = "AXIAL 5MM"
    out = run(ds).dataset
    assert "StudyDescription" not in out
    assert "SeriesDescription" not in out


# --- UIDs ----------------------------------------------------------------------------------------


def test_retain_uids_keeps_every_uid_and_reference():
    ds = base_dataset()
    originals = {k: ds[k].value for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                          "SOPInstanceUID", "FrameOfReferenceUID")}
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    ds.ReferencedImageSequence = Sequence([item])
    ds.SOPInstanceUIDOfConcatenationSource = "1.2.3.4.5.7"  # not listed in Table E.1-1
    result = run(ds, policy("retain_uids"))
    out = result.dataset
    for keyword, value in originals.items():
        assert out[keyword].value == value
    assert out.file_meta.MediaStorageSOPInstanceUID == originals["SOPInstanceUID"]
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5.6"
    assert out.SOPInstanceUIDOfConcatenationSource == "1.2.3.4.5.7"
    assert [p for p in result.pseudonyms if p.kind == "uid"] == []


# --- safe private --------------------------------------------------------------------------------

PHILIPS = "Philips PET Private Group"


def _private_blocks(ds: Dataset, creator_slot: int = 0x10) -> None:
    block = creator_slot << 8
    ds[0x70530000 | creator_slot] = DataElement(0x70530000 | creator_slot, "LO", PHILIPS)
    ds[0x70530000 | block | 0x00] = DataElement(0x70530000 | block, "DS", "1.5")  # SUV factor
    ds[0x70530000 | block | 0x09] = DataElement(0x70530000 | block | 0x09, "DS", "2.5")
    ds[0x70530000 | block | 0x77] = DataElement(0x70530000 | block | 0x77, "LO", "not listed")
    ds[0x00090010] = DataElement(0x00090010, "LO", "ACME SECRET")
    ds[0x00091001] = DataElement(0x00091001, "LO", "unknown block")


def test_safe_list_fixture_assumptions():
    safe = standard_safe_private()
    assert safe.allows(PHILIPS, 0x7053, 0x1000)
    assert safe.allows(PHILIPS, 0x7053, 0x1009)
    assert not safe.allows(PHILIPS, 0x7053, 0x1077)
    assert not safe.allows("ACME SECRET", 0x0009, 0x1001)


@pytest.mark.parametrize("where", WHERES)
@pytest.mark.parametrize("slot", [0x10, 0x42], ids=["block10", "block42"])
def test_retain_safe_private_keeps_only_safe_elements(slot, where):
    ds = base_dataset()
    _private_blocks(ds if where == "top" else add_container(ds), slot)
    pol = policy("retain_safe_private", safe_private=standard_safe_private())
    out = container(run(ds, pol).dataset, where)
    block = 0x70530000 | (slot << 8)
    assert out[0x70530000 | slot].value == PHILIPS
    assert out[block].value == 1.5
    assert out[block | 0x09].value == 2.5
    assert block | 0x77 not in out  # same block, not listed
    assert 0x00091001 not in out and 0x00090010 not in out  # unknown block, creator too


def test_retain_safe_private_matches_the_creator_case_and_padding_insensitively():
    ds = base_dataset()
    _private_blocks(ds)
    ds[0x70530010].value = "PHILIPS PET PRIVATE GROUP "
    pol = policy("retain_safe_private", safe_private=standard_safe_private())
    assert run(ds, pol).dataset[0x70531000].value == 1.5


def test_safe_private_elements_go_without_the_option():
    ds = base_dataset()
    _private_blocks(ds)
    out = run(ds, policy(safe_private=standard_safe_private())).dataset
    assert not [e.tag for e in out if e.tag.is_private]


def test_retain_safe_private_with_an_empty_list_keeps_nothing():
    ds = base_dataset()
    _private_blocks(ds)
    empty = SafePrivateList(frozenset())
    out = run(ds, policy("retain_safe_private", safe_private=empty)).dataset
    assert not [e.tag for e in out if e.tag.is_private]


def test_the_policy_keeps_the_standard_safe_list_unless_told_otherwise():
    assert policy("retain_safe_private").safe_private == standard_safe_private()


def test_retain_safe_private_on_a_real_file_keeps_exactly_the_listed_elements():
    ds = base_dataset()  # CT_small: GEMS_IDEN_01, GEMS_ACQU_01, GEMS_PATI_01, ... blocks
    safe = standard_safe_private()
    creators = {(t >> 16, t & 0xFF): ds[t].value for t in ds.keys() if Tag(t).is_private_creator}
    expected = {
        int(t): ds[t].value
        for t in ds.keys()
        if Tag(t).is_private and not Tag(t).is_private_creator
        and safe.allows(creators.get((t >> 16, (t >> 8) & 0xFF), ""), t >> 16, t & 0xFFFF)
    }
    assert len(expected) >= 2  # GEMS_ACQU_01 (0019,xx23/24/27) are listed
    out = run(ds, policy("retain_safe_private", safe_private=safe)).dataset
    kept = {int(e.tag): e.value for e in out if e.tag.is_private and not e.tag.is_private_creator}
    assert kept == expected


def test_user_safe_list_parsing():
    parsed = parse_user_list([
        "# site additions",
        "",
        "0029 xx01 ACME 1.0   # the scanner's protocol id",
        "CREATOR Other Vendor",
        "0031 1002",
        "0033 xx10 Third Vendor",
    ])
    assert parsed.keys == {
        ("ACME 1.0", 0x0029, 0x01),
        ("OTHER VENDOR", 0x0031, 0x02),
        ("THIRD VENDOR", 0x0033, 0x10),
    }
    assert parsed.allows("acme 1.0", 0x0029, 0x1101)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [("0028 xx01 ACME", "not private"), ("0029 ACME", "line 2"), ("0029 xx01", "line 2")],
)
def test_user_safe_list_errors_name_the_line(line, complaint):
    with pytest.raises(ConfigError, match=complaint):
        parse_user_list(["# header", line], source="safe.txt")


def test_user_safe_list_extends_the_standard_list_and_kept_sequences_are_cleaned():
    ds = base_dataset()
    _private_blocks(ds)
    ds[0x00290010] = DataElement(0x00290010, "LO", "ACME 1.0")
    ds[0x00291001] = DataElement(0x00291001, "LO", "PROTOCOL 7")
    item = Dataset()
    item.PatientName = PATIENT_NAME
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ds[0x00291010] = DataElement(0x00291010, "SQ", Sequence([item]))
    user = parse_user_list(["CREATOR ACME 1.0", "0029 xx01", "0029 xx10"])
    pol = policy("retain_safe_private", safe_private=standard_safe_private().union(user))
    out = run(ds, pol).dataset
    assert out[0x00291001].value == "PROTOCOL 7"
    assert out[0x70531000].value == 1.5
    kept_item = out[0x00291010].value[0]
    assert kept_item["PatientName"].is_empty
    assert UID_RE.match(kept_item.ReferencedSOPInstanceUID)


def test_patient_name_in_a_safe_private_element_is_still_caught():
    ds = base_dataset()
    ds[0x00290010] = DataElement(0x00290010, "LO", "ACME 1.0")
    ds[0x00291001] = DataElement(0x00291001, "LO", f"{FAMILY} protocol")
    pol = policy("retain_safe_private", safe_private=parse_user_list(["0029 xx01 ACME 1.0"]))
    with pytest.raises(LeakDetected, match=r"\(0029,1001\)") as info:
        run(ds, pol)
    assert FAMILY.upper() not in str(info.value).upper()


# --- patient characteristics, institution, device -----------------------------------------------


def _characteristics(ds: Dataset, age: str) -> Dataset:
    ds.PatientSex = "F"
    ds.PatientAge = age
    ds.PatientWeight = "70.5"
    ds.PatientSize = "1.65"
    ds.SmokingStatus = "NO"
    return ds


@pytest.mark.parametrize(
    ("age", "expected"),
    [("095Y", "090Y"), ("090Y", "090Y"), ("089Y", "089Y"), ("042Y", "042Y"), ("011M", "011M")],
)
def test_retain_patient_characteristics_keeps_them_with_old_ages_aggregated(age, expected):
    out = run(_characteristics(base_dataset(), age), policy("retain_patient_characteristics"))
    ds = out.dataset
    assert ds.PatientSex == "F"
    assert ds.PatientAge == expected
    assert ds.PatientWeight == 70.5
    assert ds.PatientSize == 1.65
    assert ds.SmokingStatus == "NO"


def test_patient_characteristics_go_without_the_option():
    out = run(_characteristics(base_dataset(), "095Y")).dataset
    assert out["PatientSex"].is_empty  # Z
    for keyword in ("PatientAge", "PatientWeight", "PatientSize", "SmokingStatus"):
        assert keyword not in out  # X


def test_retain_institution_identity_keeps_the_institution():
    ds = base_dataset()
    ds.InstitutionAddress = "1 Main Street"
    out = run(ds, policy("retain_institution_identity",
                         replacement_institution_name="SITE 01")).dataset
    assert out.InstitutionName == "JFK IMAGING CENTER"
    assert out.InstitutionAddress == "1 Main Street"


def test_institution_is_replaced_by_the_configured_name_or_dummied():
    ds = base_dataset()
    assert run(ds, policy(replacement_institution_name="SITE 01")).dataset.InstitutionName == (
        "SITE 01"
    )
    assert "InstitutionName" not in run(base_dataset()).dataset  # X/Z/D, Type 3 in a CT


def test_retain_device_identity_keeps_the_device():
    ds = base_dataset()
    ds.DeviceSerialNumber = "SN-12345"
    ds.StationAETitle = "STMARYS_CT1"  # C: a keyed name, the same for the same device
    out = run(ds, policy("retain_device_identity")).dataset
    assert out.StationName == "CT01_OC0"
    assert out.DeviceSerialNumber == "SN-12345"
    assert re.fullmatch(r"DEV[0-9A-F]{12}", out.StationAETitle)
    again = base_dataset()
    again.StationAETitle = "STMARYS_CT1"
    again.SOPInstanceUID += ".2"
    assert run(again, policy("retain_device_identity")).dataset.StationAETitle == out.StationAETitle
    plain = run(base_dataset()).dataset
    assert "StationName" not in plain  # X/Z/D, Type 3 in a CT


# --- structured content and graphics -----------------------------------------------------------


def _content_item(text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = text
    item.ObservationUID = "1.2.3.4.5.99"
    return item


def test_clean_structured_content_keeps_the_content_tree_with_uids_replaced():
    ds = base_dataset()
    ds.ContentSequence = Sequence([_content_item("no acute findings")])
    out = run(ds, policy("clean_structured_content")).dataset
    item = out.ContentSequence[0]
    assert item.TextValue == "no acute findings"
    assert UID_RE.match(item.ObservationUID)


def test_patient_name_in_structured_content_is_cleaned_out():
    ds = base_dataset()
    ds.ContentSequence = Sequence([_content_item(f"{GIVEN} {FAMILY} has no acute findings")])
    text = run(ds, policy("clean_structured_content")).dataset.ContentSequence[0].TextValue
    assert FAMILY.upper() not in text.upper() and GIVEN.upper() not in text.upper()
    assert "ACUTE FINDINGS" in text.upper()


def test_structured_content_without_the_option_keeps_its_tree_but_no_text():
    ds = base_dataset()
    ds.ContentSequence = Sequence([_content_item("no acute findings, Dr Hartley")])
    item = run(ds).dataset.ContentSequence[0]  # D: a dummy sequence
    assert (item.RelationshipType, item.ValueType) == ("CONTAINS", "TEXT")
    assert item.TextValue == "ANONYMIZED"
    assert UID_RE.match(item.ObservationUID)


def test_clean_graphics_keeps_overlay_geometry_without_its_text():
    ds = base_dataset()
    ds[0x60000010] = DataElement(0x60000010, "US", 8)
    ds[0x60000011] = DataElement(0x60000011, "US", 8)
    ds[0x60000040] = DataElement(0x60000040, "CS", "G")
    ds[0x60000050] = DataElement(0x60000050, "SS", [1, 1])
    ds[0x60000100] = DataElement(0x60000100, "US", 1)
    ds[0x60000102] = DataElement(0x60000102, "US", 0)
    ds[0x60003000] = DataElement(0x60003000, "OW", b"\xff" * 8)  # could hold burned-in text
    ds[0x60000022] = DataElement(0x60000022, "LO", f"marked by {FAMILY}")  # Overlay Description
    ds[0x60001500] = DataElement(0x60001500, "LO", "MARK")  # Overlay Label
    out = run(ds, policy("clean_graphics")).dataset
    # The overlay keeps its geometry (the bitmap, origin, size) and loses its words.
    assert out[0x60003000].value == b"\xff" * 8
    assert out[0x60000050].value == [1, 1]
    assert 0x60000022 not in out and 0x60001500 not in out
    assert not [e.tag for e in run(ds).dataset if e.tag.group == 0x6000]  # basic: X
