"""Which instances the pixel stage must look at: burned-in text is assumed where the instance says
so, or where its class or modality commonly carries it; videos and documents are never passed."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from gateway.pixels.risk import always_quarantined, at_risk

CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
ENHANCED_XRF = "1.2.840.10008.5.1.4.1.1.12.2.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
CDA = "1.2.840.10008.5.1.4.1.1.104.2"
STL = "1.2.840.10008.5.1.4.1.1.104.3"
MPEG4 = "1.2.840.10008.1.2.4.102"


def instance(sop_class: str, modality: str | None = None, burned_in: str | None = None,
             transfer_syntax: str = "1.2.840.10008.1.2.1") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


@pytest.mark.parametrize(("sop_class", "modality"), [
    (US, "US"), (US_MULTIFRAME, "US"), (SECONDARY_CAPTURE, "OT"), (MULTIFRAME_TRUE_COLOR_SC, "SC"),
    (XA, "XA"), (ENHANCED_XRF, "RF"),
])
def test_classes_that_commonly_carry_burned_in_text_are_at_risk_without_burned_in_annotation(
        sop_class, modality):
    assert at_risk(instance(sop_class, modality))
    assert at_risk(instance(sop_class, modality, burned_in=""))  # empty says nothing


@pytest.mark.parametrize("modality", ["US", "XA", "RF", "OT", "DOC"])
def test_a_modality_that_commonly_carries_burned_in_text_is_at_risk_in_any_class(modality):
    assert at_risk(instance(CT, modality))


def test_a_ct_is_not_at_risk_unless_it_says_it_has_burned_in_annotation():
    assert not at_risk(instance(CT, "CT"))
    assert at_risk(instance(CT, "CT", burned_in="YES"))


def test_an_ultrasound_that_says_no_burned_in_annotation_is_not_at_risk():
    assert not at_risk(instance(US, "US", burned_in="NO"))


def test_a_burned_in_annotation_value_other_than_yes_or_no_is_taken_as_yes():
    assert at_risk(instance(CT, "CT", burned_in="UNKNOWN"))
    assert at_risk(instance(CT, "CT", burned_in=["NO", "YES"]))


@pytest.mark.parametrize(("sop_class", "name"), [
    (VIDEO_ENDOSCOPIC, "Video Endoscopic Image Storage"),
    (VIDEO_PHOTOGRAPHIC, "Video Photographic Image Storage"),
    (PDF, "Encapsulated PDF Storage"),
    (CDA, "Encapsulated CDA Storage"),
    (STL, "Encapsulated STL Storage"),
])
def test_videos_and_encapsulated_documents_are_always_quarantined_even_when_they_say_no(sop_class, name):
    ds = instance(sop_class, "ES", burned_in="NO")
    assert at_risk(ds)
    reason = always_quarantined(ds)
    assert reason is not None and name in reason


def test_any_instance_in_a_video_transfer_syntax_is_always_quarantined():
    ds = instance(US_MULTIFRAME, "US", burned_in="NO", transfer_syntax=MPEG4)
    assert at_risk(ds)
    assert always_quarantined(ds) == "video transfer syntax: pixel data cannot be cleaned of burned-in text"


def test_an_image_that_can_be_cleaned_is_not_always_quarantined():
    assert always_quarantined(instance(US, "US", burned_in="YES")) is None
    assert always_quarantined(instance(CT, "CT")) is None


def test_the_class_is_taken_from_the_file_meta_when_the_data_set_lacks_it():
    ds = instance(VIDEO_ENDOSCOPIC)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    del ds.SOPClassUID
    assert always_quarantined(ds) is not None


def test_facts_without_file_meta_are_judged_too():
    ds = Dataset()
    ds.SOPClassUID, ds.Modality = US, "US"
    assert at_risk(ds)
    assert always_quarantined(ds) is None


@pytest.mark.parametrize(("name", "expected"), [
    ("US1_UNCR.dcm", True), ("OBXXXX1A.dcm", True), ("SC_rgb.dcm", True), ("CT_small.dcm", False),
    ("emri_small.dcm", False), ("MR_small.dcm", False),
])
def test_real_instances_are_judged_by_their_attributes_alone(name, expected):
    path = get_testdata_file(name)
    assert path is not None
    header_only = pydicom.dcmread(BytesIO(Path(path).read_bytes()), stop_before_pixels=True)
    assert at_risk(header_only) is expected


def test_the_check_every_instance_passes_does_not_load_numpy():
    probe = "import sys, gateway.pixels.risk; print('numpy' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.strip() == "False"
