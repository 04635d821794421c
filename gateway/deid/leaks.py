"""The leak guard: identifying values of the original must not survive anywhere in the output.

``collect_identifiers`` reads them from the original before de-identification; the engine then
checks every text value it writes, at every nesting level and in kept private elements
(``Identifiers.find_in``). It reports where (element paths), never what.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pydicom.tag import Tag

from gateway.deid.elements import Element, value_text

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
PATIENT_ID = Tag("PatientID")
_SEPARATOR = "\n"  # between the texts searched at once: not a letter or digit, so a boundary


@dataclass(frozen=True)
class Identifiers:
    """Identifying strings of one original instance, upper-cased, and a pattern matching any."""

    values: frozenset[str]
    pattern: re.Pattern[str] | None

    def scrub(self, text: str, replacement: str = "***") -> str:
        return text if self.pattern is None else self.pattern.sub(replacement, text)

    def found_in(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text.upper()) is not None

    def find_in(self, texts: list[tuple[str, str]]) -> list[str]:
        """The names (first of each pair) of the texts holding an identifying value.

        One search over all the texts joined rules out the usual case, no leak, at once; a
        match there is located text by text (a match across two texts is none).
        """
        if self.pattern is None or not texts:
            return []
        if self.pattern.search(_SEPARATOR.join(text for _, text in texts).upper()) is None:
            return []
        return [name for name, text in texts if self.found_in(text)]


def _name_parts(text: str) -> Iterator[str]:
    for part in re.split(r"[\^=\\ ,.]+", text):
        if len(part) >= MIN_NAME_PART:
            yield part.upper()


def _text_values(text: str) -> Iterator[str]:
    for item in text.split("\\"):
        item = item.strip()
        if len(item) >= MIN_ID:
            yield item.upper()


def _birth_date_forms(text: str) -> Iterator[str]:
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        y, m, d = text[:4], text[4:6], text[6:]
        yield from (text, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}")


def _person_names(buffer: memoryview, elements: Iterable[Element],
                  encodings: tuple[str, ...]) -> Iterator[str]:
    """Name parts of every PN element at every level (names of people: patient, staff...)."""
    for element in elements:
        if element.vr == "PN":
            yield from _name_parts(value_text(buffer, element, encodings))
        elif element.items:
            for item in element.items:
                yield from _person_names(buffer, item.elements, item.encodings)


def collect_identifiers(
    buffer: memoryview,
    elements: list[Element],
    top: Mapping[int, Element],
    encodings: tuple[str, ...],
    ignore: frozenset[str] = frozenset(),
    people: bool = True,
) -> Identifiers:
    """Identifying strings of a data set; ``ignore`` lists upper-case values that identify nobody.

    ``top`` indexes the data set's own elements by tag. ``people`` adds the name parts of every
    person named anywhere in the data set (staff too).
    """
    values: set[str] = set(_person_names(buffer, elements, encodings)) if people else set()
    for tag in PATIENT_NAME_TAGS:
        if tag in top:
            values.update(_name_parts(value_text(buffer, top[tag], encodings)))
    for tag in IDENTIFYING_IDS:
        if tag in top:
            values.update(_text_values(value_text(buffer, top[tag], encodings)))
    other_ids = top.get(OTHER_IDS_SEQUENCE)
    for item in (other_ids.items or []) if other_ids is not None else []:
        for element in item.elements:
            if element.tag == PATIENT_ID:
                values.update(_text_values(value_text(buffer, element, item.encodings)))
    if BIRTH_DATE in top:
        values.update(_birth_date_forms(value_text(buffer, top[BIRTH_DATE], encodings)))
    return identifiers_from(values - ignore)


def identifiers_from(values: set[str]) -> Identifiers:
    if not values:
        return Identifiers(frozenset(), None)
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    # Whole words only: "ANN" must not match "ANNOTATION"; case-insensitive for scrubbing.
    pattern = re.compile(rf"(?<![A-Z0-9])(?:{alternatives})(?![A-Z0-9])", re.IGNORECASE)
    return Identifiers(frozenset(values), pattern)
