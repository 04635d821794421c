"""Attribute Types per IOD (gateway/deid/iod.py) and the packaged tables behind them.

The expected Types are PS3.3's, as carried by highdicom 0.28.2's tables. highdicom is not needed:
only the regeneration test uses it, and it is skipped where highdicom is not installed.
"""

from __future__ import annotations

import fnmatch
import gzip
import importlib.util
import json
import re
import tomllib
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom.datadict import dictionary_has_tag, tag_for_keyword

from gateway.deid import iod
from gateway.deid.iod import attribute_type, canonical_path, decode_module, encode_module, is_known_sop_class

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_PATH = PROJECT_ROOT / "gateway" / "deid" / "data" / iod.DATA_FILE
SCRIPT_PATH = PROJECT_ROOT / "scripts" / "build_iod_types.py"

CT = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
INVENTORY = "1.2.840.10008.5.1.4.1.1.201.1"
CONTENT = "ContentSequence"
INVENTORY_ITEMS = "IncorporatedInventoryInstanceSequence"


def tags(*keywords: str) -> tuple[int, ...]:
    found = tuple(tag_for_keyword(k) for k in keywords)
    assert None not in found, keywords
    return found  # type: ignore[return-value]


def type_of(sop_class_uid: str, *keywords: str) -> str | None:
    return attribute_type(sop_class_uid, tags(*keywords))


@cache
def packaged() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(gzip.decompress(DATA_PATH.read_bytes()))
    return loaded


# --- Types in an image IOD ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        (("PatientName",), "2"),
        (("SOPInstanceUID",), "1"),
        (("InstitutionName",), "3"),
        (("ReferencedPerformedProcedureStepSequence",), "3"),
        (("RequestAttributesSequence",), "3"),
        (("RequestAttributesSequence", "ScheduledProcedureStepID"), "1C"),
        (("RequestAttributesSequence", "ScheduledProtocolCodeSequence", "CodeMeaning"), "1"),
        (("ContentDate",), "2C"),
        (("SpecificCharacterSet",), "1C"),
    ],
)
def test_ct_image_types(keywords: tuple[str, ...], expected: str) -> None:
    assert type_of(CT, *keywords) == expected


def test_an_attribute_in_several_modules_takes_the_strictest_type() -> None:
    # Image Type: 3 in General Image, 1 in CT Image; Acquisition Number: 3 in General Acquisition,
    # 2 in CT Image.
    assert type_of(CT, "ImageType") == "1"
    assert type_of(CT, "AcquisitionNumber") == "2"


def test_overlay_repeating_groups_answer_as_group_6000() -> None:
    overlay_data = 0x60003000
    assert attribute_type(CT, (overlay_data,)) == "1"
    assert attribute_type(CT, (0x60020000 | 0x3000,)) == "1"
    assert attribute_type(CT, (0x601E0000 | 0x3000,)) == "1"
    assert attribute_type(CT, (0x60010000 | 0x3000,)) is None  # odd group: private


# --- SR content trees ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3, 8, 40])
def test_sr_content_item_types_are_the_same_at_every_depth(depth: int) -> None:
    nesting = (CONTENT,) * depth
    assert type_of(COMPREHENSIVE_SR, *nesting, "TextValue") == "1C"
    assert type_of(COMPREHENSIVE_SR, *nesting, "RelationshipType") == "1"
    assert type_of(COMPREHENSIVE_SR, *nesting, "ValueType") == "1"
    assert type_of(COMPREHENSIVE_SR, *nesting, "ConceptNameCodeSequence", "CodeMeaning") == "1"
    assert type_of(COMPREHENSIVE_SR, *nesting, "MeasuredValueSequence", "NumericValue") == "1"
    assert type_of(COMPREHENSIVE_SR, *nesting, "ReferencedSOPSequence", "ReferencedSOPInstanceUID") == "1"
    # From the Document Relationship Macro, which the tables list only at the root.
    assert type_of(COMPREHENSIVE_SR, *nesting, "ObservationDateTime") == "1C"
    assert type_of(COMPREHENSIVE_SR, *nesting, "ObservationUID") == "3"
    assert type_of(COMPREHENSIVE_SR, *nesting, CONTENT) == "1C"


def test_sr_root_content_item() -> None:
    assert type_of(COMPREHENSIVE_SR, CONTENT) == "1C"
    assert type_of(COMPREHENSIVE_SR, "ValueType") == "1"
    assert type_of(COMPREHENSIVE_SR, "RelationshipType") is None  # only items relate to a parent
    assert type_of(COMPREHENSIVE_SR, "VerifyingObserverSequence", "VerifyingObserverName") == "1"
    assert type_of(COMPREHENSIVE_SR, "VerifyingObserverSequence", "VerifyingOrganization") == "1"
    observer_code = ("VerifyingObserverSequence", "VerifyingObserverIdentificationCodeSequence")
    assert type_of(COMPREHENSIVE_SR, *observer_code) == "2"


def test_a_nested_recursive_sequence_keeps_its_own_type_not_the_top_levels() -> None:
    # Encapsulated Document: Content Sequence is 3 at the top, 1C inside a content item.
    assert type_of(ENCAPSULATED_PDF, CONTENT) == "3"
    for depth in (2, 3, 9):
        assert type_of(ENCAPSULATED_PDF, *(CONTENT,) * depth) == "1C"
        assert type_of(ENCAPSULATED_PDF, *(CONTENT,) * depth, "ObservationUID") == "3"
    # Inventory: Incorporated Inventory Instance Sequence is 2 at the top, 1C nested.
    assert type_of(INVENTORY, INVENTORY_ITEMS) == "2"
    assert type_of(INVENTORY, INVENTORY_ITEMS, INVENTORY_ITEMS) == "1C"
    assert type_of(INVENTORY, INVENTORY_ITEMS, INVENTORY_ITEMS, INVENTORY_ITEMS, "FileAccessURI") == "1C"


def test_a_fixed_nesting_is_not_folded_like_a_recursive_one() -> None:
    # SR: Referenced SOP Sequence > Referenced SOP Sequence holds only the two UIDs.
    inner = (CONTENT, "ReferencedSOPSequence", "ReferencedSOPSequence")
    assert type_of(COMPREHENSIVE_SR, *inner, "ReferencedSOPInstanceUID") == "1"
    assert type_of(COMPREHENSIVE_SR, *inner, "ReferencedFrameNumber") is None


# --- unknowns -----------------------------------------------------------------------------------


def test_unknown_sop_class() -> None:
    assert not is_known_sop_class("1.2.3.4.5")
    assert attribute_type("1.2.3.4.5", tags("PatientName")) is None
    assert is_known_sop_class(CT)
    assert is_known_sop_class(COMPREHENSIVE_SR)


@pytest.mark.parametrize(
    "path",
    [
        (),
        (0x00091010,),  # private
        tags("TextValue"),  # an SR attribute, not in a CT image
        tags(CONTENT, "TextValue"),
        tags("RequestAttributesSequence", "PatientName"),  # a top-level attribute, nested
        tags("PatientName", "PatientName"),
    ],
)
def test_a_path_the_iod_does_not_define(path: tuple[int, ...]) -> None:
    assert attribute_type(CT, path) is None


def test_folding_keeps_paths_without_recursion_unchanged() -> None:
    recursive = set(tags(CONTENT))
    path = tags("RequestAttributesSequence", "ScheduledProtocolCodeSequence", "CodeValue")
    assert canonical_path(path, recursive) == path
    deep = tags(CONTENT, CONTENT, CONTENT, "ConceptNameCodeSequence", "CodeValue")
    assert canonical_path(deep, recursive) == tags(CONTENT, "ConceptNameCodeSequence", "CodeValue")
    assert canonical_path(tags(CONTENT, CONTENT, CONTENT), recursive) == tags(CONTENT, CONTENT)


# --- the packaged data --------------------------------------------------------------------------


def test_packaged_data_records_its_source() -> None:
    source = packaged()["source"]
    assert iod.data_source() == source
    assert source["highdicom_version"] == "0.28.2"
    assert source["dicom_standard_edition"]
    assert set(source["files"]) == {
        "sop_class_iod_map.json",
        "iod_module_map.json",
        "module_attribute_map.json",
    }
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in source["files"].values())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", source["generated"])


def test_packaged_data_is_consistent() -> None:
    data = packaged()
    assert data["format"] == iod.FORMAT_VERSION
    absent = set(data["skipped"]["modules_named_by_iods_but_absent"])
    assert set(data["sop_classes"].values()) <= set(data["iods"])
    for modules in data["iods"].values():
        for module, usage in modules:
            assert usage in {"M", "C", "U"}
            assert module in data["modules"] or module in absent
    recursive = {int(tag, 16) for tag in data["recursive"]}
    for module, encoded in data["modules"].items():
        for entry in encoded.split(","):
            key, listed_type = entry.split("=")
            path = tuple(int(tag, 16) for tag in key.split(">"))
            assert listed_type in iod.TYPE_ORDER, (module, entry)
            assert canonical_path(path, recursive) == path, (module, entry)  # stored as the reader folds
            assert all(dictionary_has_tag(tag) or tag >> 16 == 0x6000 for tag in path), (module, entry)
        assert encode_module(decode_module(encoded)) == encoded


def test_every_storage_sop_class_has_a_populated_iod() -> None:
    media_storage_directory = "1.2.840.10008.1.3.10"  # its SOP Instance UID is in the File Meta
    for uid in set(packaged()["sop_classes"]) - {media_storage_directory}:
        assert attribute_type(uid, tags("SOPInstanceUID")) == "1", uid
    assert type_of(media_storage_directory, "DirectoryRecordSequence") == "2"


def test_the_tables_extra_pins_the_recorded_highdicom_and_the_file_ships() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = packaged()["source"]["highdicom_version"]
    assert project["project"]["optional-dependencies"]["tables"] == [f"highdicom=={version}"]
    assert not any("highdicom" in dep for dep in project["project"]["dependencies"])
    patterns = project["tool"]["setuptools"]["package-data"]["gateway.deid"]
    assert any(fnmatch.fnmatch(f"data/{iod.DATA_FILE}", pattern) for pattern in patterns)


def load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_iod_types", SCRIPT_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_from_the_installed_highdicom_gives_the_packaged_data() -> None:
    highdicom = pytest.importorskip("highdicom")
    source = packaged()["source"]
    if highdicom.__version__ != source["highdicom_version"]:
        pytest.skip(f"highdicom {highdicom.__version__} is installed, the data is from another version")
    script = load_build_script()
    folder = script.installed_tables()
    rebuilt = script.build(folder, source["highdicom_version"], source["generated"])
    assert rebuilt == packaged()
