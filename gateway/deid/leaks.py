"""The leak guard: identifying values of the original must not survive anywhere in the output.

``collect_identifiers`` reads them from the original before de-identification; ``find_leaks``
scans every text element of the result, at every nesting level and in kept private elements.
It reports where (element paths), never what.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

MIN_NAME_PART = 3  # shorter name parts ("LI", "O") match too much ordinary text
MIN_ID = 3
SCANNED_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "UN"})
IDENTIFYING_IDS = (
    Tag("PatientID"),
    Tag("OtherPatientIDs"),
    Tag("AccessionNumber"),
    Tag("MedicalRecordLocator"),
)
PATIENT_NAME_TAGS = (Tag("PatientName"), Tag("OtherPatientNames"), Tag("PatientBirthName"),
                     Tag("PatientMotherBirthName"))
BIRTH_DATE = Tag("PatientBirthDate")
OTHER_IDS_SEQUENCE = Tag("OtherPatientIDsSequence")


@dataclass(frozen=True)
class Identifiers:
    """Identifying strings of one original instance, upper-cased, and a pattern matching any."""

    values: frozenset[str]
    pattern: re.Pattern[str] | None

    def scrub(self, text: str, replacement: str = "***") -> str:
        return text if self.pattern is None else self.pattern.sub(replacement, text)

    def found_in(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text.upper()) is not None


def vr_of(element: DataElement | RawDataElement) -> str:
    vr = element.VR
    if vr:
        return str(vr)
    tag = BaseTag(element.tag)
    if tag.is_private:
        return "UN"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _name_parts(value: object) -> Iterator[str]:
    text = str(value or "")
    for part in re.split(r"[\^=\\ ,.]+", text):
        if len(part) >= MIN_NAME_PART:
            yield part.upper()


def _text_values(value: object) -> Iterator[str]:
    if value is None:
        return
    items: Iterable[object] = value if is_multi(value) else [value]  # type: ignore[assignment]
    for item in items:
        text = str(item).strip()
        if len(text) >= MIN_ID:
            yield text.upper()


def is_multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _birth_date_forms(value: object) -> Iterator[str]:
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        y, m, d = text[:4], text[4:6], text[6:]
        yield from (text, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}")


def _person_names(ds: Dataset) -> Iterator[str]:
    """Name parts of every PN element at every level (names of people: patient, staff...)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if raw is None:
            continue
        vr = vr_of(raw)
        if vr == "PN":
            yield from _name_parts(ds[tag].value)
        elif vr == "SQ":
            for item in ds[tag].value:
                yield from _person_names(item)


def collect_identifiers(
    ds: Dataset, ignore: frozenset[str] = frozenset(), people: bool = True
) -> Identifiers:
    """Identifying strings of ``ds``; ``ignore`` lists upper-case values that identify nobody.

    ``people`` adds the name parts of every person named anywhere in the data set (staff too).
    """
    values: set[str] = set(_person_names(ds)) if people else set()
    for tag in PATIENT_NAME_TAGS:
        if tag in ds:
            values.update(_name_parts(ds[tag].value))
    for tag in IDENTIFYING_IDS:
        if tag in ds:
            values.update(_text_values(ds[tag].value))
    other_ids = ds[OTHER_IDS_SEQUENCE].value if OTHER_IDS_SEQUENCE in ds else None
    for item in other_ids or []:
        values.update(_text_values(item.get("PatientID")))
    if BIRTH_DATE in ds:
        values.update(_birth_date_forms(ds[BIRTH_DATE].value))
    return identifiers_from(values - ignore)


def identifiers_from(values: set[str]) -> Identifiers:
    if not values:
        return Identifiers(frozenset(), None)
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    # Whole words only: "ANN" must not match "ANNOTATION"; case-insensitive for scrubbing.
    pattern = re.compile(rf"(?<![A-Z0-9])(?:{alternatives})(?![A-Z0-9])", re.IGNORECASE)
    return Identifiers(frozenset(values), pattern)


def as_text(element: DataElement) -> str:
    value = element.value
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def find_leaks(
    ds: Dataset, identifiers: Identifiers, skip: frozenset[int] = frozenset(), path: str = ""
) -> list[str]:
    """Paths of elements (e.g. ``ContentSequence[0].TextValue``) holding an identifying value.

    ``skip`` names top-level tags not to scan (used when trusting already de-identified input,
    whose own identity elements are the source of the identifiers).
    """
    if identifiers.pattern is None:
        return []
    hits: list[str] = []
    for tag in list(ds.keys()):
        if not path and tag in skip:
            continue
        raw = ds.get_item(tag)
        if raw is None:
            continue
        vr = vr_of(raw)
        if vr == "SQ":
            name = _element_name(ds[tag])
            for index, item in enumerate(ds[tag].value):
                hits.extend(find_leaks(item, identifiers, skip, f"{path}{name}[{index}]."))
        elif vr in SCANNED_VRS:
            element = ds[tag]
            if identifiers.found_in(as_text(element)):
                hits.append(path + _element_name(element))
    return hits


def _element_name(element: DataElement) -> str:
    return element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
