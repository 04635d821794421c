"""Shared helpers for the de-identification tests: datasets, planted values, table rows.

Kept out of conftest.py on purpose (the lead owns conftest.py); tests import from here.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from gateway.deid import iod
from gateway.deid.engine import Policy, Result, deidentify
from gateway.deid.profile import build_profile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = PROJECT_ROOT / "gateway" / "deid" / "data" / "ps315_annex_e.json"
SAFE_PRIVATE_PATH = PROJECT_ROOT / "gateway" / "deid" / "data" / "ps315_safe_private.json"
SHARED = PROJECT_ROOT.parent / "shared"

SECRET = b"tests-secret-0123456789abcdef-0001"
OTHER_SECRET = b"tests-secret-0123456789abcdef-0002"

# The patient every synthetic dataset belongs to (replaces CT_small's own identity).
FAMILY = "Smithson"
GIVEN = "Johnathan"
PATIENT_NAME = f"{FAMILY}^{GIVEN}"
PATIENT_ID = "PID-778899"
BIRTH_DATE = "19500304"

UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")
PSEUDONYM_RE = re.compile(r"^ANON[0-9A-F]{16}$")

# The sequence that holds "nested" plants: not listed in Table E.1-1, so kept and walked.
CONTAINER = "ReferencedSeriesSequence"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

WHERES = ("top", "nested")
PATIENT_NAME_TAG = Tag("PatientName")
PATIENT_ID_TAG = Tag("PatientID")

TEXT_SAMPLE = "PLANTED VALUE"
# A text sample that carries the patient's family name among ordinary words (fits SH/CS/AE).
DIRTY_TEXT = f"LEFT {FAMILY.upper()}"


# --- the table ---------------------------------------------------------------------------------


@cache
def table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(TABLE_PATH.read_text("utf-8"))
    return data


@cache
def safe_private_table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SAFE_PRIVATE_PATH.read_text("utf-8"))
    return data


def is_exact(row: dict[str, Any]) -> bool:
    """A row naming one tag (not the 50xx/60xx repeating groups or 'private')."""
    return re.fullmatch(r"[0-9A-Fa-f]{8}", row["pattern"]) is not None


def exact_rows() -> list[dict[str, Any]]:
    return [r for r in table()["attributes"] if is_exact(r)]


def pattern_rows() -> list[dict[str, Any]]:
    return [r for r in table()["attributes"] if not is_exact(r)]


def option_keys() -> list[str]:
    return [o["key"] for o in table()["options"]]


def row_tag(row: dict[str, Any]) -> BaseTag:
    return Tag(int(row["pattern"], 16))


def row_id(row: dict[str, Any]) -> str:
    return row["keyword"] or row["pattern"]


def plant_vr(row: dict[str, Any]) -> str:
    """The VR to plant a row with. Rows pydicom's dictionary does not know arrive as UN, which
    is how an implicit-VR sender's unknown tag reaches the engine."""
    vr = row["vr"]
    return "UN" if vr is None else str(vr)


# --- values ------------------------------------------------------------------------------------


def planted_uid(tag: int, salt: int = 0) -> str:
    return f"1.3.6.1.4.1.99999.{salt}.{int(tag)}"


def sample_item(tag: int) -> Dataset:
    """A sequence item whose contents show whether the item was kept and its UIDs replaced."""
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = planted_uid(tag, 7)
    return item


def sample_value(vr: str, tag: int) -> Any:
    """A recognizable, valid value of ``vr`` (each UID unique to the tag)."""
    samples: dict[str, Any] = {
        "AE": "PLANTEDAE",
        "AS": "042Y",
        "CS": "PLANTED_VALUE",
        "DA": "20010203",
        "DS": "123.5",
        "DT": "20010203101112",
        "IS": "4242",
        "LO": TEXT_SAMPLE,
        "LT": TEXT_SAMPLE,
        "PN": "Plantedperson^Rowvalue",
        "SH": TEXT_SAMPLE,
        "ST": TEXT_SAMPLE,
        "TM": "101112",
        "UC": TEXT_SAMPLE,
        "UR": "https://example.org/planted",
        "UT": TEXT_SAMPLE,
        "US": 4242,
        "SS": 4242,
        "UL": 4242,
        "SL": 4242,
        "FL": 42.5,
        "FD": 42.5,
        "OB": b"PLANTED!",
        "OW": b"PLANTED!",
        "UN": b"PLANTED!",
    }
    if vr == "UI":
        return planted_uid(tag)
    if vr == "SQ":
        return Sequence([sample_item(tag)])
    return samples[vr]


def element(tag: int, vr: str, value: Any) -> DataElement:
    return DataElement(tag, vr, value)


# --- datasets ----------------------------------------------------------------------------------


@cache
def _file_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def file_bytes(path: str) -> bytes:
    return _file_bytes(path)


def read(path: str, **kwargs: Any) -> Dataset:
    """A fresh dataset read from (cached) file bytes."""
    return pydicom.dcmread(io.BytesIO(_file_bytes(path)), **kwargs)


def load_testfile(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return read(str(path))


def base_dataset() -> Dataset:
    """CT_small with a known patient (name, ID, birth date) to look for afterwards."""
    ds = load_testfile("CT_small.dcm")
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    return ds


def add_container(ds: Dataset) -> Dataset:
    """Add the kept sequence with one item and return that item."""
    item = Dataset()
    ds[CONTAINER] = DataElement(Tag(CONTAINER), "SQ", Sequence([item]))
    return item


def container(ds: Dataset, where: str) -> Dataset:
    if where == "top":
        return ds
    assert CONTAINER in ds, f"{CONTAINER} (not in Table E.1-1) must be kept"
    items = ds[CONTAINER].value
    assert len(items) == 1
    return items[0]


def policy(*options: str, **kwargs: Any) -> Policy:
    return Policy(profile=build_profile(options), **kwargs)


def run(ds: Dataset, pol: Policy | None = None, secret: bytes = SECRET) -> Result:
    return deidentify(ds, pol or policy(), secret)


def write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def roundtrip(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(write(ds)))


def da(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, DataElement]]:
    """Every element at every nesting level, with a readable path."""
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                yield from walk(item, f"{path}{name}[{index}].")
        else:
            yield path + name, elem


def text_of(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return "\\".join(str(v) for v in value)
    return str(value)


def corpus_files() -> list[str]:
    """Every regular file pydicom and pydicom-data ship as test data (DICOMDIRs excluded)."""
    files = []
    for path in get_testdata_files():
        if not os.path.isfile(path) or "DICOMDIR" in os.path.basename(path).upper():
            continue
        files.append(path)
    return sorted(files)


def corpus_id(path: str) -> str:
    """A short unique id for a corpus file (pydicom-data has files named only by number)."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts[-2] not in ("test_files", "data") else parts[-1]


# --- planting a Table E.1-1 row and checking its action ----------------------------------------


# What a compound action becomes for an attribute of each IOD type (None: a type the tables do
# not know, so a present attribute is never removed). "U*": the items kept with new UIDs (for
# references whatever their type: see engine._resolve_compound).
COMPOUND_BY_TYPE: dict[tuple[str, str | None], str] = {
    ("X/Z", "3"): "X", ("X/Z", "2"): "Z", ("X/Z", "1"): "D", ("X/Z", None): "Z",
    ("X/D", "3"): "X", ("X/D", "2"): "Z", ("X/D", "1"): "D", ("X/D", None): "D",
    ("Z/D", "3"): "Z", ("Z/D", "2"): "Z", ("Z/D", "1"): "D", ("Z/D", None): "D",
    ("X/Z/D", "3"): "X", ("X/Z/D", "2"): "Z", ("X/Z/D", "1"): "D", ("X/Z/D", None): "D",
    ("X/Z/U*", "3"): "U*", ("X/Z/U*", "2"): "U*", ("X/Z/U*", "1"): "U*", ("X/Z/U*", None): "U*",
}


def iod_type(row: dict[str, Any], where: str, sop_class: str = CT_IMAGE_STORAGE) -> str | None:
    """The attribute's type ("1", "2", "3") where it is planted, in the CT Image IOD."""
    tag = int(row_tag(row))
    path = (tag,) if where == "top" or row_tag(row).group == 0x0002 else (int(Tag(CONTAINER)), tag)
    kind = iod.attribute_type(sop_class, path)
    return None if kind is None else kind[0]


def documented_action(action: str, planted_empty: bool = False, kind: str | None = None) -> str:
    """The action the engine documents for a Table E.1-1 code, given the attribute's IOD type
    where it was planted (engine._resolve_compound): an empty attribute is never given a
    dummy."""
    if "/" not in action:
        return action
    resolved = COMPOUND_BY_TYPE[(action, kind)]
    return "Z" if resolved == "D" and planted_empty else resolved


def unplantable(row: dict[str, Any], where: str) -> str | None:
    if row_tag(row).group == 0x0002 and where == "nested":
        return "file meta element: exists only in the file meta information"
    return None


def plant(ds: Dataset, row: dict[str, Any], where: str, value: Any = None) -> Any:
    """Plant the row's attribute at the top level or in an item of the kept container."""
    tag, vr = row_tag(row), plant_vr(row)
    value = sample_value(vr, tag) if value is None else value
    if tag.group == 0x0002:
        ds.file_meta[tag] = element(tag, vr, value)
        if tag == Tag("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = value  # the file meta names the instance it holds
    else:
        target = ds if where == "top" else add_container(ds)
        target[tag] = element(tag, vr, value)
    return value


def output_container(out: Dataset, row: dict[str, Any], where: str) -> Dataset:
    return out.file_meta if row_tag(row).group == 0x0002 else container(out, where)


def assert_item_kept(items: Sequence, tag: int, uids_retained: bool = False) -> None:
    """The planted sequence item is still there; its instance UID replaced unless retained."""
    assert len(items) == 1, "the sequence must keep its item"
    item = items[0]
    assert item.ReferencedSOPClassUID == CT_IMAGE_STORAGE  # a class UID identifies no one
    new = item.ReferencedSOPInstanceUID
    if uids_retained:
        assert new == planted_uid(tag, 7)
    else:
        assert new != planted_uid(tag, 7)
        assert UID_RE.match(new), new


def assert_action(
    action: str,
    row: dict[str, Any],
    where: str,
    out: Dataset,
    planted: Any,
    uids_retained: bool = False,
) -> None:
    """Assert what ``action`` (X, Z, D, U, U*, K) did to the planted attribute."""
    tag, vr = row_tag(row), plant_vr(row)
    holder = output_container(out, row, where)
    if where == "top" and tag in (PATIENT_NAME_TAG, PATIENT_ID_TAG):
        # The top-level identity holds the pseudonym, whatever the table says.
        assert PSEUDONYM_RE.match(str(holder[tag].value))
        assert str(out.PatientName) == str(out.PatientID)
        return
    if action == "X":
        assert tag not in holder
        return
    assert tag in holder, f"{action}: the attribute must stay present"
    got = holder[tag]
    assert vr == got.VR
    if action == "Z":
        assert got.is_empty, f"Z: expected empty, got {got.value!r}"
    elif action == "D":
        assert not got.is_empty
        if vr == "SQ":
            assert_item_kept(got.value, tag)
        elif vr == "UI":
            assert UID_RE.match(got.value) and got.value != planted
        else:
            assert got.value != planted
            assert "PLANTED" not in text_of(got).upper()
    elif action == "U":
        assert vr == "UI", "U is only listed for UIDs"
        assert got.value != planted
        assert UID_RE.match(got.value), got.value
        assert len(got.value) <= 64
    elif action == "U*":
        assert vr == "SQ"
        assert_item_kept(got.value, tag)
    elif action == "K":
        if vr == "SQ":
            assert_item_kept(got.value, tag, uids_retained)
        else:
            assert got.value == planted
    else:
        raise AssertionError(f"no check for action {action}")
