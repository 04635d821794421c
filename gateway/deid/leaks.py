"""The leak guard: identifying values of the original must not survive anywhere in the output.

``collect_identifiers`` reads them from the original before de-identification; the engine then
checks every text value it writes, at every nesting level and in kept private elements
(``Identifiers.find_in``). It reports where (element paths), never what.

What counts as identifying:
- the patient's names (PatientName, OtherPatientNames, PatientBirthName, PatientMotherBirthName),
  every part of every component group, except placeholders ("Unknown^Unknown", "TEST", a phantom);
- the name parts of every other person named anywhere (staff), except placeholders, titles and
  vocabulary words ("SERVICE", "HEAD"); a name made only of those and of the words of the
  instance's own device attributes (Manufacturer, ManufacturerModelName, StationName; not the
  institution, which identifies) names nobody: "GE^SERVICE" beside "GE MEDICAL SYSTEMS";
- the patient's IDs, the accession number, the birth date in its usual written forms.

How they are found: a Latin (or Greek, Cyrillic...) value as whole words ("LI" in "CT LI CHEST",
not in "CLINIC"); a CJK (ideographic, kana, hangul) value of two or more characters anywhere, as
CJK text has no spaces; a single CJK character only as a whole value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from pydicom.tag import Tag

from gateway.deid import vocabulary
from gateway.deid.elements import Element, value_text

MIN_NAME_PART = 2  # a single letter is an initial: it matches too much ordinary text
MIN_HYPHEN_PART = 3  # "SMITH" of "SMITH-JONES" counts alone; "AL" of "AL-SAYED" does not
MIN_ID = 3  # shorter IDs count only when they hold a digit ("AB" is a word, "A1" is not)
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
# Whose words describe the equipment, not a person (the institution does identify: not here).
DEVICE_TAGS = frozenset(int(Tag(keyword)) for keyword in ("Manufacturer", "ManufacturerModelName",
                                                            "StationName"))
_PATIENT_NAMES = frozenset(int(tag) for tag in PATIENT_NAME_TAGS)  # int look-ups: no Tag.__eq__
_SEPARATOR = "\n"  # between the texts searched at once: not a letter or digit, so a boundary

# Scripts written without spaces between words: hiragana, katakana, CJK ideographs, hangul.
_CJK_RANGES = ("\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
               "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f")
_CJK = re.compile(f"[{_CJK_RANGES}]")
# A word character of a spaced script: a Latin name next to a CJK character is still a word.
_WORD_CHAR = f"[^\\W_{_CJK_RANGES}]"
_TOKEN = re.compile(f"{_WORD_CHAR}+")
_NAME_SEPARATORS = re.compile(r"[\^\s,.\u00b7\u30fb]+")  # components, spaces, middle dots
_VALUE_ENDS = "\n\\"  # between texts and between the values of one text
_VALUE_PADDING = " \u3000"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Values standing for "no name" or "no ID": a name made only of these names nobody.
PLACEHOLDER_WORDS = _words("""
    UNKNOWN UNK UNKN ANONYMOUS ANON ANONYMIZED ANONYMISED DEIDENTIFIED DE-IDENTIFIED REMOVED
    REDACTED TEST TESTING NONE NULL NIL NA N/A PATIENT NAME NONAME NOBODY LAST FIRST MIDDLE
    FAMILY GIVEN SURNAME FORENAME DUMMY SAMPLE DEMO EXAMPLE XXX XXXX
""")
# Titles and honorifics ("DR" is also Digital Radiography): part of no one's name.
TITLES = _words("MR MRS MS MISS MX DR PROF SIR JR SR II III IV MD PHD RN")
# A patient "name" of these (and vocabulary words) is a test object: "PHANTOM^HEAD", "QA^CHEST".
PHANTOM_WORDS = _words("PHANTOM QA QC CALIBRATION CATPHAN")
# Words staff names are made of that name nobody ("CT^SERVICE", "Verifying Observer"): roles,
# modalities, anatomy, views and vendors. Kept short: a staff member called "Hunter" stays guarded.
VOCABULARY_WORDS = _words("""
    SERVICE SERVICES ENGINEER ENGINEERING FIELD PHYSICS PHYSICIST MEDICAL QA QC TECH TECHNICIAN
    TECHNOLOGIST RADIOGRAPHER OPERATOR ADMIN ADMINISTRATOR USER DEFAULT GUEST RESEARCH RADIOLOGY
    RADIOLOGIST DOCTOR PHYSICIAN NURSE STAFF CLINICAL APPLICATION APPLICATIONS APPS SUPPORT
    SPECIALIST SITE VENDOR SYSTEM SYSTEMS AUTO AUTOMATIC MANUAL UNIT DEPARTMENT DEPT LAB ROOM
    CONSOLE STATION WORKSTATION SCANNER MODALITY HOSPITAL CLINIC REFERRING PERFORMING READING
    REPORTING REQUESTING VERIFYING OBSERVER AUTHOR REVIEWER RESIDENT FELLOW STUDENT TRAINEE
    ONCALL ON-CALL EMERGENCY TEAM GROUP ENTER TEXT
    CT MR MRI PET PT NM US CR DX XA RF MG OT SC SR IO PX ES XC ECG OB GYN OBGYN ECHO VASCULAR
    HEAD NECK CHEST THORAX ABDOMEN ABD PELVIS SPINE BRAIN SKULL KNEE HIP SHOULDER HAND FOOT ANKLE
    WRIST ELBOW CARDIAC HEART BREAST LUNG LIVER KIDNEY EXTREMITY BODY WHOLE LEG ARM
    AP PA LAT LATERAL LEFT RIGHT LT RT BILATERAL AXIAL AX SAG SAGITTAL COR CORONAL OBLIQUE
    PHANTOM WATER CALIBRATION CAL DAILY WEEKLY ACR CATPHAN
    STUDY SERIES IMAGE SCAN EXAM PROTOCOL ROUTINE CONTRAST
    GE GEMS SIEMENS PHILIPS TOSHIBA CANON HITACHI FUJI FUJIFILM AGFA KODAK CARESTREAM HOLOGIC
    VARIAN ELEKTA HEALTHCARE
""")


_WORD, _RUN, _SINGLE = "word", "run", "single"  # how a value is found (see the module's doc)


@dataclass(frozen=True)
class Identifiers:
    """Identifying strings of one original instance, upper-cased."""

    values: frozenset[str]
    kinds: tuple[tuple[str, str], ...] = field(init=False, repr=False)  # (value, how it is found)

    def __post_init__(self) -> None:
        kinds = [(value, _kind(value)) for value in sorted(self.values)]
        object.__setattr__(self, "kinds", tuple((value, kind) for value, kind in kinds if kind))

    def scrub(self, text: str, replacement: str = "***") -> str:
        """``text`` with every identifying value replaced (case kept elsewhere)."""
        upper, origin = _upper_with_origin(text)
        spans = _merged(self._spans(upper))
        if origin is not None:
            spans = [(origin[start], origin[end - 1] + 1) for start, end in spans]
        for start, end in reversed(spans):
            text = text[:start] + replacement + text[end:]
        return text

    def found_in(self, text: str) -> bool:
        return self._found(text.upper())

    def find_in(self, texts: list[tuple[str, str]]) -> list[str]:
        """The names (first of each pair) of the texts holding an identifying value.

        One search over all the texts joined rules out the usual case, no leak, at once; a
        match there is located text by text (a match across two texts is none).
        """
        if not self.kinds or not texts:
            return []
        if not self._found(_SEPARATOR.join(text for _, text in texts).upper()):
            return []
        return [name for name, text in texts if self.found_in(text)]

    def _found(self, upper: str) -> bool:
        # A substring test per value (C speed, no per-instance regex to compile) rules out
        # nearly every value; only a value present is checked for its boundaries.
        return any(value in upper and _occurs(value, kind, upper) for value, kind in self.kinds)

    def _spans(self, upper: str) -> Iterator[tuple[int, int]]:
        for value, kind in self.kinds:
            start = upper.find(value)
            while start >= 0:
                if _bounded(upper, start, start + len(value), kind):
                    yield start, start + len(value)
                start = upper.find(value, start + 1)


def _kind(value: str) -> str | None:
    if _CJK.search(value):
        return _SINGLE if len(value) == 1 else _RUN
    return _WORD if _TOKEN.search(value) else None  # no letter or digit: identifies nobody


def _occurs(value: str, kind: str, text: str) -> bool:
    start = text.find(value)
    while start >= 0:
        if _bounded(text, start, start + len(value), kind):
            return True
        start = text.find(value, start + 1)
    return False


def _bounded(text: str, start: int, end: int, kind: str) -> bool:
    """Whether ``text[start:end]`` stands as its kind must: a whole word, anywhere (CJK of two
    or more characters), or a whole value (one CJK character)."""
    if kind == _WORD:
        return not (start and _is_word_char(text[start - 1])) and not (
            end < len(text) and _is_word_char(text[end]))
    if kind == _SINGLE:
        before = text[:start].rstrip(_VALUE_PADDING)
        after = text[end:].lstrip(_VALUE_PADDING)
        return (not before or before[-1] in _VALUE_ENDS) and (not after or after[0] in _VALUE_ENDS)
    return True


def _is_word_char(char: str) -> bool:
    return char.isalnum() and _CJK.match(char) is None


def _upper_with_origin(text: str) -> tuple[str, list[int] | None]:
    """``text`` upper-cased and, where that changed its length ("ß" is "SS"), where each upper
    character came from."""
    upper = text.upper()
    if len(upper) == len(text):
        return upper, None
    origin: list[int] = []
    for index, char in enumerate(text):
        origin.extend([index] * len(char.upper()))
    return upper, origin


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


# --- names ---------------------------------------------------------------------------------------


def _name_parts(text: str) -> list[str]:
    """Upper-case parts of a person name, every value and component group; a CJK group's parts
    joined too ("王^小明" is written "王小明")."""
    parts: list[str] = []
    for name in text.upper().split("\\"):
        for group in name.split("="):
            group_parts = [part for part in _NAME_SEPARATORS.split(group) if _is_name_part(part)]
            parts.extend(group_parts)
            cjk = [part for part in group_parts if _CJK.search(part)]
            if len(cjk) > 1:
                parts.append("".join(cjk))
            parts.extend(sub for part in group_parts if "-" in part
                         for sub in part.split("-") if len(sub) >= MIN_HYPHEN_PART)
    return parts


def _is_name_part(part: str) -> bool:
    if _CJK.search(part):
        return True  # one ideograph can be a whole family name
    return len(part) >= MIN_NAME_PART and _TOKEN.search(part) is not None


def _patient_name_parts(text: str, ignore: frozenset[str]) -> Iterator[str]:
    """The patient's name parts: all identifying, unless the name is a placeholder or a phantom."""
    for person in _persons(text, ignore):
        parts = _name_parts(person)
        if _is_placeholder_name(parts):
            continue
        for part in parts:
            if part in TITLES or (len(part) >= MIN_ID and part in PLACEHOLDER_WORDS):
                continue  # "Unknown^John": the placeholder word is no part of a name
            yield part


def _is_placeholder_name(parts: list[str]) -> bool:
    """"Unknown^Unknown", "OB", "CT^HEAD", "PHANTOM^001": no person's name (a name of only the
    standard's own words, not the shared vocabulary's: "Rose^Hunter" is somebody)."""
    if all(part in PLACEHOLDER_WORDS or part in TITLES or part in VOCABULARY_WORDS for part in parts):
        return True
    return not PHANTOM_WORDS.isdisjoint(parts) and all(
        part in PLACEHOLDER_WORDS or _is_vocabulary(part) or part.isdigit() for part in parts)


def _staff_name_parts(text: str, ignore: frozenset[str], device: frozenset[str]) -> Iterator[str]:
    """Parts of another person's name that could name someone.

    A name made only of roles, vendor and device words ("GE^SERVICE" beside Manufacturer "GE
    MEDICAL SYSTEMS") names nobody. A name with one personal part names a person: then a part
    that is also a device word still counts ("Quimby" of "Quimby^Harriet" copied into the
    Manufacturer is a leak, not a vendor).
    """
    for person in _persons(text, ignore):
        parts = _name_parts(person)
        if all(_names_nobody(part, device) for part in parts):
            continue
        yield from (part for part in parts if not _names_nobody(part, frozenset()))


def _persons(text: str, ignore: frozenset[str]) -> Iterator[str]:
    """The values of a PN element, without those the gateway writes itself."""
    for person in text.split("\\"):
        if person.strip().upper() not in ignore:
            yield person


def _names_nobody(part: str, device: frozenset[str]) -> bool:
    return all(_is_no_name(word, device) for word in _TOKEN.findall(part) or [part])


def _is_no_name(word: str, device: frozenset[str]) -> bool:
    return (len(word) < MIN_NAME_PART and not _CJK.search(word)) or word in PLACEHOLDER_WORDS \
        or word in TITLES or word in device or _is_vocabulary(word)


def _is_vocabulary(word: str) -> bool:
    return word in VOCABULARY_WORDS or vocabulary.is_vocabulary_word(word)


def _people(buffer: memoryview, elements: Iterable[Element], encodings: tuple[str, ...],
            found: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(tag, text) of every PN element and device attribute at every level, added to ``found``."""
    for element in elements:
        if element.vr == "PN" or element.tag in DEVICE_TAGS:
            found.append((element.tag, value_text(buffer, element, encodings)))
        elif element.items:
            for item in element.items:
                _people(buffer, item.elements, item.encodings, found)
    return found


def _device_words(texts: Iterable[str]) -> frozenset[str]:
    words: set[str] = set()
    for text in texts:
        upper = text.upper()
        words.update(_TOKEN.findall(upper))
        words.update(value.strip() for value in upper.split("\\"))
    return frozenset(words)


# --- IDs and dates -------------------------------------------------------------------------------


def _id_values(text: str, ignore: frozenset[str]) -> Iterator[str]:
    for item in text.upper().split("\\"):
        item = item.strip()
        if _is_identifying_id(item) and item not in ignore:
            yield item


def _is_identifying_id(value: str) -> bool:
    has_digit = any(c.isdigit() for c in value)
    if len(value) < MIN_ID and not (len(value) == 2 and has_digit):
        return False
    if has_digit:
        return value.strip("0-") != ""  # "000000" stands for no ID
    return not all(token in PLACEHOLDER_WORDS for token in _TOKEN.findall(value)) \
        and value not in PLACEHOLDER_WORDS


def _birth_date_forms(text: str) -> Iterator[str]:
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        y, m, d = text[:4], text[4:6], text[6:]
        yield from (text, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}")


# --- collecting ----------------------------------------------------------------------------------


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
    values: set[str] = set()
    if people:  # the patient's own names among them
        values.update(_everyones_name_parts(buffer, elements, encodings, ignore))
    else:
        for tag in PATIENT_NAME_TAGS:
            if tag in top:
                values.update(_patient_name_parts(value_text(buffer, top[tag], encodings), ignore))
    for tag in IDENTIFYING_IDS:
        if tag in top:
            values.update(_id_values(value_text(buffer, top[tag], encodings), ignore))
    other_ids = top.get(OTHER_IDS_SEQUENCE)
    for item in (other_ids.items or []) if other_ids is not None else []:
        for element in item.elements:
            if element.tag == PATIENT_ID:
                values.update(_id_values(value_text(buffer, element, item.encodings), ignore))
    if BIRTH_DATE in top:
        values.update(_birth_date_forms(value_text(buffer, top[BIRTH_DATE], encodings)))
    return identifiers_from(values - ignore)


def _everyones_name_parts(buffer: memoryview, elements: list[Element], encodings: tuple[str, ...],
                          ignore: frozenset[str]) -> Iterator[str]:
    """Name parts of every person at every level: patients' by the patient's rules, staff's
    without the words of the instance's own equipment."""
    found = _people(buffer, elements, encodings, [])
    device = _device_words(text for tag, text in found if tag in DEVICE_TAGS)
    for tag, text in found:
        if tag in _PATIENT_NAMES:
            yield from _patient_name_parts(text, ignore)
        elif tag not in DEVICE_TAGS:
            yield from _staff_name_parts(text, ignore, device)


def identifiers_from(values: set[str]) -> Identifiers:
    return Identifiers(frozenset(value.upper() for value in values if value))
