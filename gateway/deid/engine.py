"""The de-identification engine: an encoded instance in, a de-identified one out, given a policy
and a secret key.

Pure: no network, no disk, no database. What it learned (original -> pseudonym pairs, attributes
the table does not cover) comes back in the result for the caller to record.

The walk is driven by the tags present: each element is looked up in the resolved Table E.1-1 and
only elements whose action changes them are decoded (see ``elements``); the rest, Pixel Data
included, are copied as the bytes they came in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from io import BytesIO
from typing import Literal

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.tag import Tag

from gateway import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, __version__
from gateway.deid import codes, dates, iod, leaks, vocabulary
from gateway.deid.elements import (
    DEFAULT_ENCODINGS,
    DEFLATED,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PREAMBLE,
    Element,
    EncodedInstance,
    Encoding,
    Reader,
    charset_encodings,
    check_pixel_data,
    deflate,
    element_bytes,
    encode_value,
    file_meta,
    read_dataset,
    read_encoded,
    sequence_bytes,
    value_text,
)
from gateway.deid.once import built_once
from gateway.deid.private import SafePrivateList, standard_safe_private
from gateway.deid.profile import (
    CLEAN,
    DUMMY,
    KEEP,
    REMOVE,
    REPLACE_UID,
    ZERO,
    Option,
    Profile,
    build_profile,
)
from gateway.deid.uids import CLASS_UID_KEYWORDS_SUFFIXES, DEFAULT_ROOT, UidMapper
from gateway.errors import (
    BurnedInAnnotation,
    LeakDetected,
    MalformedInstance,
    NotAnInstance,
    UnknownPatient,
    unexpected_errors_as_malformed,
)

DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, object] = {
    "AE": DUMMY_TEXT, "AS": "000Y", "CS": DUMMY_TEXT, "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": DUMMY_TEXT, "LT": DUMMY_TEXT, "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT, "ST": DUMMY_TEXT, "TM": "000000", "UC": DUMMY_TEXT, "UR": DUMMY_TEXT,
    "UT": DUMMY_TEXT, "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0,
    "UV": 0, "AT": 0, "OB": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4,
    "OL": b"\x00" * 4, "OV": b"\x00" * 8, "OW": b"\x00\x00", "UN": b"\x00\x00",
}
# Text VRs whose unlisted attributes may carry free text about a person: reported for review.
FREE_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT", "DA", "DT"})
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
CODED_TEXT_VRS = frozenset({"AE", "CS", "UR"})

PATIENT_NAME = int(Tag("PatientName"))
PATIENT_ID = int(Tag("PatientID"))
ISSUER_OF_PATIENT_ID = int(Tag("IssuerOfPatientID"))
PATIENT_BIRTH_DATE = int(Tag("PatientBirthDate"))
PATIENT_AGE = int(Tag("PatientAge"))
INSTITUTION_NAME = int(Tag("InstitutionName"))
BURNED_IN = int(Tag("BurnedInAnnotation"))
IDENTITY_REMOVED = int(Tag("PatientIdentityRemoved"))
METHOD = int(Tag("DeidentificationMethod"))
METHOD_CODES = int(Tag("DeidentificationMethodCodeSequence"))
LONGITUDINAL = int(Tag("LongitudinalTemporalInformationModified"))
SOP_CLASS_UID = int(Tag("SOPClassUID"))
SOP_INSTANCE_UID = int(Tag("SOPInstanceUID"))
STUDY_INSTANCE_UID = int(Tag("StudyInstanceUID"))
SERIES_INSTANCE_UID = int(Tag("SeriesInstanceUID"))
MODALITY = int(Tag("Modality"))
ROWS = int(Tag("Rows"))
PIXEL_DATA_PROVIDER = int(Tag("PixelDataProviderURL"))
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an instance
# Output values the callers need (routing, file names), read off the result as text.
FACT_TAGS = (PATIENT_ID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_CLASS_UID,
             SOP_INSTANCE_UID, MODALITY, BURNED_IN)

# Set by the engine itself after the walk (see _marks), so never reported as unhandled.
MARKING_TAGS = frozenset({IDENTITY_REMOVED, METHOD, LONGITUDINAL})
# Unlisted attributes of these VRs are copied untouched (_apply_unlisted, _copy): no sequence,
# UID, free text, date or scanned text; the tags below have rules of their own.
_PLAIN_VRS = frozenset({"AS", "AT", "CS", "DS", "FD", "FL", "IS", "OB", "OD", "OF", "OL", "OV",
                        "OW", "SL", "SS", "SV", "TM", "UL", "US", "UV"})
_SPECIAL_TAGS = frozenset({PATIENT_AGE, INSTITUTION_NAME})
_OVERLAY_GROUPS = frozenset(range(0x6000, 0x6100, 2))
_OVERLAY_TEXT = frozenset({0x0022, 0x1500, 0x4000})  # Overlay Description, Label, Comments
GRAPHIC_ANNOTATIONS = int(Tag("GraphicAnnotationSequence"))
TIMEZONE_OFFSET = int(Tag("TimezoneOffsetFromUTC"))
_MULTI_VALUED_TEXT = frozenset({"LO", "SH", "UC", "PN"})
# Inside a dummy sequence these stay: numbers (measurements, geometry), enumerated codes (value
# and relationship types), ages and binary data. Text, names, dates, times and UIDs are replaced.
_REPLACED_KEPT_VRS = frozenset({"AS", "AT", "CS", "FD", "FL", "IS", "SL", "SS", "SV", "UL",
                                "US", "UV", "OB", "OD", "OF", "OL", "OV", "OW"})
# ... except measured values, which are replaced like any other value: a decimal string is
# free text for numbers, and an SR's NUM items and waveform annotations hold the original's.
_MEASUREMENTS: dict[int, object] = {
    int(Tag("FloatingPointValue")): 0.0, int(Tag("RationalNumeratorValue")): 0,
    int(Tag("RationalDenominatorValue")): 1,
}

PatientMode = Literal["hash", "table", "fixed"]
Chunk = bytes | memoryview


@dataclass(frozen=True)
class PatientPolicy:
    """How the patient's identity is replaced."""

    mode: PatientMode = "hash"
    prefix: str = "ANON"
    table: Mapping[str, str] = field(default_factory=dict)  # original PatientID -> subject ID
    fixed_id: str = "ANONYMOUS"
    fixed_name: str = "ANONYMOUS"


@dataclass(frozen=True)
class Policy:
    profile: Profile
    patient: PatientPolicy = PatientPolicy()
    uid_root: str = DEFAULT_ROOT
    date_shift_min_days: int = 1
    date_shift_max_days: int = 365
    trust_deidentified: bool = False
    strict: bool = False
    quarantine_burned_in_annotation: bool = True
    safe_private: SafePrivateList = field(default_factory=standard_safe_private)
    replacement_institution_name: str = ""
    clean_words: frozenset[str] = frozenset()  # the user's words that cleaned text may keep


@dataclass(frozen=True)
class Pseudonym:
    """One original -> pseudonym pair, for the pseudonym map (the re-identification key)."""

    kind: Literal["patient", "uid", "date_shift"]
    original: str
    pseudonym: str


@dataclass
class Result:
    chunks: list[Chunk]  # the de-identified Part 10 file, in pieces (see ``data``)
    pseudonyms: list[Pseudonym]
    unhandled: Counter[int]  # unlisted free-text tags present (reported, never their values)
    facts: dict[int, str]  # output values of FACT_TAGS present at the top level
    transfer_syntax_uid: str
    trusted: bool = False  # passed on unchanged as already de-identified

    @property
    def sop_instance_uid(self) -> str:
        return self.facts.get(SOP_INSTANCE_UID, "")

    @property
    def sop_class_uid(self) -> str:
        return self.facts.get(SOP_CLASS_UID, "")

    @property
    def modality(self) -> str:
        return self.facts.get(MODALITY, "")

    def fact(self, tag: int) -> str:
        return self.facts.get(tag, "")

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    @cached_property
    def data(self) -> bytes:
        """The file as one piece; writers take ``chunks`` and spare this copy."""
        return b"".join(self.chunks)

    @cached_property
    def dataset(self) -> Dataset:
        """The output decoded by pydicom (for inspection; the gateway itself never needs it)."""
        return dcmread(BytesIO(self.data))


def patient_key(ds: Dataset) -> str:
    """What identifies the patient for pseudonyms and date shifts (see ``_patient_key``)."""
    return _patient_key(str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""),
                        str(ds.get("PatientName", "") or ""), str(ds.get("PatientBirthDate", "")))


def _patient_key(pid: str, issuer: str, name: str, birth_date: str) -> str:
    """Issuer + PatientID; without a PatientID, name + birth date stand in, so a patient still
    gets one pseudonym."""
    pid, issuer = pid.strip(), issuer.strip()
    if pid:
        return f"{issuer}\\{pid}" if issuer else pid
    return f"name:{name.strip()}\\{birth_date}"


def _keyed_token(secret: bytes, label: bytes, value: str, length: int) -> str:
    digest = hmac.new(secret, label + b"\x00" + value.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:length].upper()


def pseudonymous_patient_id(secret: bytes, key: str, prefix: str) -> str:
    return f"{prefix}{_keyed_token(secret, b'patient', key, 16)}"


# --- entry points ------------------------------------------------------------------------------


def deidentify_encoded(data: bytes, policy: Policy, secret: bytes) -> Result:
    """De-identify a Part 10 file or bare data set given as bytes.

    Raises NotDicom (not an instance: skip) or an :class:`~gateway.errors.InstanceError` when
    the instance must be quarantined (MalformedInstance for anything unexpected).
    """
    with unexpected_errors_as_malformed():
        return _Instance(read_encoded(data), policy, secret).deidentify()


def deidentify_dataset(dataset: bytes | bytearray | memoryview, transfer_syntax: str,
                       policy: Policy, secret: bytes) -> Result:
    """De-identify a data set without file meta (as C-STORE carries it) in ``transfer_syntax``."""
    with unexpected_errors_as_malformed():
        return _Instance(read_dataset(dataset, transfer_syntax), policy, secret).deidentify()


def deidentify(ds: Dataset, policy: Policy, secret: bytes) -> Result:
    """De-identify a pydicom data set (encoded first, as it would be sent); ``ds`` is unchanged."""
    return deidentify_encoded(encode_dataset(ds), policy, secret)


def encode_dataset(ds: Dataset) -> bytes:
    """A Part 10 file of ``ds`` in its transfer syntax (its file meta's, else as it was read)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not syntax:
        implicit, little = ds.original_encoding
        if implicit is None:
            implicit, little = False, True
        syntax = (IMPLICIT_VR_LITTLE_ENDIAN if implicit else
                  EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN)
    if syntax == DEFLATED:
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    body = DicomBytesIO()
    body.is_implicit_VR = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    body.is_little_endian = syntax != EXPLICIT_VR_BIG_ENDIAN
    write_dataset(body, ds)
    sop_class = str(ds.get("SOPClassUID", "") or "")
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    meta_bytes = file_meta(sop_class, sop_instance, syntax, IMPLEMENTATION_CLASS_UID,
                           IMPLEMENTATION_VERSION_NAME)
    return b"\x00" * PREAMBLE + b"DICM" + meta_bytes + body.getvalue()


# --- one instance ------------------------------------------------------------------------------

Entries = list[tuple[int, Chunk]]  # (tag, encoded element) in output order


# How the leaves of a data set are treated: by their own actions (NORMAL), or, inside a sequence
# whose action is D (REPLACED) or C (CLEANED), every leaf the table does not list is replaced or
# cleaned too, so that a dummy sequence carries no original value.
Mode = Literal["normal", "replaced", "cleaned"]
NORMAL: Mode = "normal"
REPLACED: Mode = "replaced"
CLEANED: Mode = "cleaned"


@dataclass
class _Level:
    """One data set being written: its encoding, character set, path (for leak reports), the
    tags of the sequences it lies in (for the IOD's types) and how its leaves are treated."""

    encoding: Encoding
    encodings: tuple[str, ...]
    path: str
    out: Entries = field(default_factory=list)
    tags: tuple[int, ...] = ()
    mode: Mode = NORMAL
    elements: list[Element] = field(default_factory=list)  # those being walked (siblings)


class _Instance:
    def __init__(self, instance: EncodedInstance, policy: Policy, secret: bytes) -> None:
        self.instance = instance
        self.buffer = instance.buffer
        self.policy = policy
        self.secret = secret
        self.options = policy.profile.option_keys
        self.top = {e.tag: e for e in instance.elements}
        self.encodings = (charset_encodings(self.buffer, self.top[0x00080005])
                          if 0x00080005 in self.top else DEFAULT_ENCODINGS)
        self.uids = UidMapper(secret, policy.uid_root)
        self.unhandled: Counter[int] = Counter()
        self.scanned: list[tuple[str, str]] = []  # (element path, text) of every text written
        self.identifiers = leaks.identifiers_from(set())
        self.patient_id = ""
        self.pseudo_id = ""
        self.date_shift: int | None = None
        self.time_shift = 0  # seconds, with date_shift
        self.sop_class = ""

    def text(self, tag: int) -> str:
        element = self.top.get(tag)
        return "" if element is None else value_text(self.buffer, element, self.encodings)

    def deidentify(self) -> Result:
        self._check_instance()
        if self.policy.quarantine_burned_in_annotation and self.text(BURNED_IN).strip().upper() == "YES":
            raise BurnedInAnnotation("BurnedInAnnotation is YES and pixel cleaning is not available")
        trusted = (self.policy.trust_deidentified
                   and self.text(IDENTITY_REMOVED).strip().upper() == "YES")
        try:
            # Trusted input is already de-identified: its staff names (dummies or kept on
            # purpose) are not the patient's, so only the patient's own identity is guarded.
            self.identifiers = leaks.collect_identifiers(
                self.buffer, self.instance.elements, self.top, self.encodings,
                ignore=_own_values(self.policy), people=not trusted)
        except (ValueError, TypeError, KeyError, LookupError) as exc:
            raise MalformedInstance(f"cannot read patient attributes ({type(exc).__name__})") from exc
        if trusted:
            return self._pass_trusted()
        return self._clean()

    def _check_instance(self) -> None:
        sop_class = self.text(SOP_CLASS_UID).strip() or self.instance.media_sop_class
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            raise NotAnInstance("a DICOMDIR (media directory), not an instance")
        for tag, name in ((SOP_INSTANCE_UID, "SOPInstanceUID"),
                          (STUDY_INSTANCE_UID, "StudyInstanceUID"),
                          (SERIES_INSTANCE_UID, "SeriesInstanceUID")):
            if not self.text(tag).strip():
                raise MalformedInstance(f"{name} is missing")
        if not any(tag in self.top for tag in PIXEL_DATA_TAGS):
            if ROWS in self.top:
                # A file cut exactly between two elements parses cleanly: an image without its
                # pixels is the visible trace.
                raise MalformedInstance("image attributes without pixel data (truncated?)")
            if iod.attribute_type(sop_class, (ROWS,)) == "1" and PIXEL_DATA_PROVIDER not in self.top:
                # A "header only" copy of an image: passed on, it could stand in for the real one.
                raise MalformedInstance("an image instance without its Image Pixel module")
        check_pixel_data(self.buffer, self.top, self.instance.encoding)

    def _pass_trusted(self) -> Result:
        # The identity elements are where the identifiers came from; they must appear nowhere else.
        own = frozenset({*leaks.PATIENT_NAME_TAGS, *leaks.IDENTIFYING_IDS, leaks.BIRTH_DATE,
                         leaks.OTHER_IDS_SEQUENCE})
        level = _Level(self.instance.encoding, self.encodings, "")
        for element in self.instance.elements:
            if element.tag not in own:
                self._scan_tree(element, level)
        self._raise_on_leaks()
        body: list[Chunk] = [self.buffer[self.instance.body_start :]]
        facts = {tag: self.text(tag).strip() for tag in FACT_TAGS if tag in self.top}
        return self._result(body, facts, [], trusted=True)

    def _scan_tree(self, element: Element, level: _Level) -> None:
        if element.items is not None:
            name = _element_name(element.tag)
            for index, item in enumerate(element.items):
                inner = _Level(level.encoding, item.encodings, f"{level.path}{name}[{index}].")
                for nested in item.elements:
                    self._scan_tree(nested, inner)
        elif element.vr in leaks.SCANNED_VRS:
            self.scanned.append((level.path + _element_name(element.tag),
                                 value_text(self.buffer, element, level.encodings)))

    def _clean(self) -> Result:
        policy = self.policy
        pid = self.text(PATIENT_ID)
        key = _patient_key(pid, self.text(ISSUER_OF_PATIENT_ID), self.text(PATIENT_NAME),
                           self.text(PATIENT_BIRTH_DATE))
        self.pseudo_id, pseudo_name = self._pseudo_identity(pid, key)
        self.patient_id = pid.strip()
        if "retain_long_modified_dates" in self.options:
            self.date_shift = dates.date_shift_days(
                self.secret, key, policy.date_shift_min_days, policy.date_shift_max_days)
            self.time_shift = dates.time_shift_seconds(self.secret, key)
        self.sop_class = self.text(SOP_CLASS_UID).strip() or self.instance.media_sop_class
        level = _Level(self.instance.encoding, self.encodings, "")
        try:
            self._clean_elements(self.instance.elements, level)
            identity = {
                PATIENT_ID: self._generated(PATIENT_ID, "LO", self.pseudo_id, level),
                PATIENT_NAME: self._generated(PATIENT_NAME, "PN", pseudo_name, level),
            }
            entries = {tag: chunk for tag, chunk in level.out}
            _drop_unconditioned(entries, policy.profile)
            entries.update(identity)
            entries.update(self._marks(level))
        except (ValueError, TypeError, KeyError, LookupError, OverflowError) as exc:
            # Undecodable values: fail closed into quarantine, naming only the error class.
            raise MalformedInstance(f"cannot de-identify ({type(exc).__name__})") from exc
        self._raise_on_leaks()
        body = _merged([entries[tag] for tag in sorted(entries)])
        facts = {tag: self._output_text(tag, entries[tag], level) for tag in FACT_TAGS
                 if tag in entries}
        pseudonyms = [Pseudonym("patient", key, self.pseudo_id)]
        if self.date_shift is not None:
            pseudonyms.append(Pseudonym("date_shift", key, str(self.date_shift)))
        pseudonyms.extend(Pseudonym("uid", old, new) for old, new in self.uids.produced.items())
        return self._result(body, facts, pseudonyms)

    def _result(self, body: list[Chunk], facts: dict[int, str], pseudonyms: list[Pseudonym],
                trusted: bool = False) -> Result:
        syntax = self.instance.transfer_syntax
        if syntax == DEFLATED:
            body = [deflate(b"".join(body))]
        meta = file_meta(facts.get(SOP_CLASS_UID, ""), facts.get(SOP_INSTANCE_UID, ""), syntax,
                         IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
        chunks: list[Chunk] = [b"\x00" * PREAMBLE + b"DICM" + meta, *body]
        return Result(chunks, pseudonyms, self.unhandled, facts, syntax, trusted=trusted)

    def _output_text(self, tag: int, chunk: Chunk, level: _Level) -> str:
        """A top-level output element's value, read back from its encoding."""
        element = read_encoded_element(chunk, level.encoding)
        return value_text(memoryview(chunk), element, level.encodings).strip()

    def _raise_on_leaks(self) -> None:
        hits = self.identifiers.find_in(self.scanned)
        if hits:
            raise LeakDetected(f"identifying value survives in {', '.join(sorted(set(hits))[:10])}")

    def _pseudo_identity(self, pid: str, key: str) -> tuple[str, str]:
        """(new PatientID, new PatientName) for the instance's patient."""
        patient = self.policy.patient
        if patient.mode == "fixed":
            return patient.fixed_id, patient.fixed_name
        if patient.mode == "table":
            subject = patient.table.get(pid.strip())
            if subject is None:
                raise UnknownPatient("PatientID is not in the configured patient table")
            return subject, subject
        pseudo = pseudonymous_patient_id(self.secret, key, patient.prefix)
        return pseudo, pseudo

    # --- the walk ------------------------------------------------------------------------------

    def _clean_elements(self, elements: list[Element], level: _Level) -> None:
        kept_private = self._kept_private(elements)
        overlays = set()
        level.elements = elements
        action_for, out, buffer = self.policy.profile.action_for, level.out, self.buffer
        plain = level.mode == NORMAL
        for element in elements:
            tag = element.tag
            if (tag >> 16) & 1:
                if tag in kept_private:
                    self._keep(element, level)
            elif tag & 0xFFFF == 0:
                continue  # group lengths are stale once anything changes
            elif plain and element.vr in _PLAIN_VRS and action_for(tag) is None and \
                    tag not in _SPECIAL_TAGS:
                # Most of an image's attributes: unlisted numbers and codes, kept as they came.
                out.append((tag, buffer[element.start : element.end]))
            else:
                if (tag >> 16) in _OVERLAY_GROUPS:
                    if tag & 0xFFFF in _OVERLAY_TEXT:
                        continue  # words about an overlay (no option keeps them): never needed
                    if tag & 0xFFFF == 0x3000:
                        overlays.add(tag >> 16)
                self._apply(element, level)
        # An overlay whose data is gone goes as a whole (its description and label with it):
        # an Overlay Plane without its Type 1 data is an invalid module.
        if overlays:
            written = {tag for tag, _ in level.out}
            gone = {g for g in overlays if (g << 16) | 0x3000 not in written}
            if gone:
                level.out[:] = [(t, c) for t, c in level.out if t >> 16 not in gone]

    def _kept_private(self, elements: list[Element]) -> set[int]:
        """Private elements Retain Safe Private keeps, with the creators of their blocks."""
        if "retain_safe_private" not in self.options:
            return set()
        creators = {}
        for element in elements:
            group, number = element.tag >> 16, element.tag & 0xFFFF
            if group & 1 and 0x10 <= number <= 0xFF:
                creators[(group, number)] = value_text(self.buffer, element, DEFAULT_ENCODINGS)
        kept = set()
        for element in elements:
            group, number = element.tag >> 16, element.tag & 0xFFFF
            if not group & 1 or number <= 0xFF:
                continue
            creator = creators.get((group, number >> 8))
            if creator is not None and self.policy.safe_private.allows(creator, group, number):
                kept.add(element.tag)
                kept.add((group << 16) | (number >> 8))
        return kept

    def _apply(self, element: Element, level: _Level) -> None:
        tag = element.tag
        if tag == INSTITUTION_NAME and self._replaces_institution():
            self._write(element, self.policy.replacement_institution_name, level)
            return
        action = self.policy.profile.action_for(tag)
        if action is None:
            if level.mode == NORMAL:
                self._apply_unlisted(element, level)
            else:
                self._replace_leaf(element, level)
            return
        handler = _HANDLERS.get(action) or self._compound(action, element, level)
        handler(self, element, level)

    def _compound(self, action: str, element: Element, level: _Level) -> _Handler:
        """X/Z, X/D, Z/D, X/Z/D, X/Z/U*: resolved by the attribute's type at its place in the
        instance's IOD (Type 3 removed, Type 2 emptied, Type 1 a dummy, or its UIDs replaced)."""
        kind = iod.attribute_type(self.sop_class, (*level.tags, element.tag))
        return _resolve_compound(action, element, None if kind is None else kind[0])

    def _replaces_institution(self) -> bool:
        # The replacement stands in for the dummy; Retain Institution Identity keeps the original.
        return bool(self.policy.replacement_institution_name) and (
            "retain_institution_identity" not in self.options
        )

    # --- writing --------------------------------------------------------------------------------

    def _copy(self, element: Element, level: _Level) -> None:
        """Keep the element as it came in (an age over 89 is still aggregated)."""
        if element.vr in leaks.SCANNED_VRS or element.tag == PATIENT_AGE:
            text = value_text(self.buffer, element, level.encodings)
            if element.tag == PATIENT_AGE:
                aggregated = dates.aggregate_age(text)
                if aggregated != text:
                    self._write(element, aggregated, level)
                    return
            if element.vr in leaks.SCANNED_VRS:
                self.scanned.append((level.path + _element_name(element.tag), text))
        level.out.append((element.tag, self.buffer[element.start : element.end]))

    def _write(self, element: Element, value: object, level: _Level) -> None:
        """Write ``element`` with a new value (text, number or bytes)."""
        if element.tag == PATIENT_AGE and isinstance(value, str):
            value = dates.aggregate_age(value)
        level.out.append((element.tag, self._generated(element.tag, element.vr, value, level)))

    def _generated(self, tag: int, vr: str, value: object, level: _Level) -> bytes:
        if vr in leaks.SCANNED_VRS and isinstance(value, str):
            self.scanned.append((level.path + _element_name(tag), value))
        return element_bytes(tag, vr, encode_value(value, vr, level.encoding, level.encodings),
                             level.encoding)

    def _write_sequence(self, element: Element, level: _Level, clean: bool = True,
                        mode: Mode | None = None) -> None:
        """Write a sequence with its items cleaned (or none, when ``clean`` is False); ``mode``
        says how the items' leaves are treated (the enclosing level's by default)."""
        items = []
        name = _element_name(element.tag)
        inner = element.inner or level.encoding
        tags = (*level.tags, element.tag)
        for index, item in enumerate(element.items or [] if clean else []):
            nested = _Level(inner, item.encodings, f"{level.path}{name}[{index}].", tags=tags,
                            mode=mode or level.mode)
            if nested.mode != NORMAL and codes.CODING_SCHEME_DESIGNATOR in _tags_of(item.elements):
                self._code_item(item.elements, nested)
            else:
                self._clean_elements(item.elements, nested)
            items.append([chunk for _, chunk in nested.out])
        header_vr = "UN" if inner.implicit and not level.encoding.implicit else "SQ"
        level.out.append((element.tag, sequence_bytes(element.tag, items, inner, header_vr)))

    # --- actions --------------------------------------------------------------------------------

    def _remove(self, element: Element, level: _Level) -> None:
        pass

    def _zero(self, element: Element, level: _Level) -> None:
        if element.vr == "SQ":
            self._write_sequence(element, level, clean=False)
        else:
            self._write(element, b"", level)

    def _dummy(self, element: Element, level: _Level) -> None:
        vr = element.vr
        if vr == "SQ":
            # A required sequence keeps its structure; every value in it is replaced.
            self._write_sequence(element, level, mode=CLEANED if level.mode == CLEANED else REPLACED)
        elif vr == "UI":
            self._replace_uid(element, level)
        elif element.tag == PATIENT_ID:
            self._replace_patient_id(element, level)
        else:
            self._write(element, DUMMY_BY_VR.get(vr, DUMMY_TEXT), level)

    def _keep(self, element: Element, level: _Level) -> None:
        if element.vr == "SQ":
            self._write_sequence(element, level)
        elif self.date_shift is not None and element.vr in ("DA", "DT"):
            self._shift_date(element, level)  # one kept unshifted date would reveal the shift
        else:
            self._copy(element, level)

    def _clean_value(self, element: Element, level: _Level) -> None:
        """C: keep the meaning, drop what identifies: shifted dates and times, text reduced to
        the clean vocabulary, devices by a keyed name, structured content cleaned leaf by leaf."""
        vr = element.vr
        if vr == "SQ":
            # Graphic annotations keep their geometry and lose their words (Clean Graphics).
            graphic = element.tag == GRAPHIC_ANNOTATIONS
            self._write_sequence(element, level, mode=REPLACED if graphic else CLEANED)
        elif vr in ("DA", "DT", "TM"):
            self._shift_date(element, level)
        elif element.tag == TIMEZONE_OFFSET:
            self._write(element, "+0000", level)  # the offset would name the place
        elif vr == "AE":
            self._device_name(element, level)
        elif vr in CODED_TEXT_VRS:
            # Codes cannot hold a cleaned text: one that names someone is replaced.
            if self.identifiers.found_in(value_text(self.buffer, element, level.encodings)):
                self._dummy(element, level)
            else:
                self._copy(element, level)
        elif vr == "PN":
            self._dummy(element, level)
        elif vr in TEXT_VRS:
            self._clean_text(element, level)
        elif (element.tag >> 16) in _OVERLAY_GROUPS and element.tag & 0xFFFF == 0x3000:
            self._copy(element, level)  # Clean Graphics: the overlay's bitmap is its geometry
        else:
            # A value the engine cannot clean (OB/OW/UN: MakerNote, CertifiedTimestamp...) gets
            # the basic profile's action instead of passing through unchanged.
            basic = _basic_profile().action_for(element.tag) or REMOVE
            if basic in (CLEAN, KEEP):  # pragma: no cover - the basic column has neither
                basic = REMOVE
            (_HANDLERS.get(basic) or self._compound(basic, element, level))(self, element, level)

    def _clean_text(self, element: Element, level: _Level) -> None:
        text = value_text(self.buffer, element, level.encodings)
        values = text.split("\\") if element.vr in _MULTI_VALUED_TEXT else [text]
        cleaned = [self._clean_words(v) for v in values]
        new = "\\".join(cleaned)
        if new == text:
            self._copy(element, level)
        elif new.strip(" \\") or element.empty:
            self._write(element, new, level)
        else:
            self._write(element, b"", level)  # nothing left that is known to be safe

    def _clean_words(self, text: str) -> str:
        """The words of the clean vocabulary (or the user's), less the patient's own (a name
        that is also an ordinary word)."""
        words = self.policy.clean_words
        cleaned = vocabulary.clean_text(text, words)
        if self.identifiers.found_in(cleaned):
            cleaned = vocabulary.clean_text(self.identifiers.scrub(cleaned, " "), words)
        return cleaned

    def _device_name(self, element: Element, level: _Level) -> None:
        """An AE title becomes a keyed name: the same device keeps one name, its site none."""
        text = value_text(self.buffer, element, level.encodings).strip()
        if not text:
            self._copy(element, level)
            return
        names = [f"DEV{_keyed_token(self.secret, b'ae', v.strip(), 12)}" for v in text.split("\\")]
        self._write(element, "\\".join(names), level)

    def _shift_date(self, element: Element, level: _Level) -> None:
        """A date, time or date-time moved by the patient's shift; without one, a dummy."""
        if element.empty:
            self._copy(element, level)
            return
        if self.date_shift is None:
            self._dummy(element, level)
            return
        text = value_text(self.buffer, element, level.encodings)
        days, seconds = self.date_shift, self.time_shift
        if element.vr == "DA":
            days += dates.time_carry(self._sibling_time(element, level), seconds)
            shifted = dates.shift_da(text, days)
        elif element.vr == "TM":
            shifted = dates.shift_tm(text, seconds)
        else:
            shifted = dates.shift_moment(text, days, seconds)
        # Not a date we can shift: a dummy keeps the element without its original value.
        self._write(element, DUMMY_BY_VR[element.vr] if shifted is None else shifted, level)

    def _sibling_time(self, element: Element, level: _Level) -> str:
        """The value of the TM that goes with a DA (StudyDate - StudyTime), "" when none."""
        time_tag = _paired_time(element.tag)
        if time_tag is None:
            return ""
        for sibling in level.elements:
            if sibling.tag == time_tag:
                return value_text(self.buffer, sibling, level.encodings)
        return ""

    def _replace_uid(self, element: Element, level: _Level) -> None:
        text = value_text(self.buffer, element, level.encodings)
        if not text.strip(" \x00"):
            self._copy(element, level)
            return
        replaced = [self.uids.replace(v) for v in text.split("\\")]
        self._write(element, "\\".join(replaced), level)

    def _replace_patient_id(self, element: Element, level: _Level) -> None:
        # A nested PatientID of the same patient gets the same pseudonym; another's is dummied.
        same = value_text(self.buffer, element, level.encodings).strip() == self.patient_id
        self._write(element, self.pseudo_id if same else DUMMY_TEXT, level)

    def _apply_unlisted(self, element: Element, level: _Level) -> None:
        """Attributes Table E.1-1 does not name: recurse, re-key instance UIDs, report free text."""
        vr = element.vr
        if vr == "SQ":
            self._keep(element, level)
        elif vr == "UI":
            self._unlisted_uid(element, level)
        elif vr in FREE_TEXT_VRS and element.tag not in MARKING_TAGS and not element.empty:
            self.unhandled[element.tag] += 1
            if self.policy.strict:
                return
            if self.date_shift is not None and vr in ("DA", "DT"):
                self._shift_date(element, level)
            else:
                self._copy(element, level)
        else:
            self._copy(element, level)

    def _unlisted_uid(self, element: Element, level: _Level) -> None:
        # Under Retain UIDs an unlisted reference to an instance (e.g. SOPInstanceUIDOf-
        # ConcatenationSource) must keep matching the retained UID it points at.
        if "retain_uids" in self.options or _is_class_uid(element.tag):
            self._copy(element, level)
        else:
            self._replace_uid(element, level)

    # --- inside replaced (D) and cleaned (C) sequences ------------------------------------------

    def _replace_leaf(self, element: Element, level: _Level) -> None:
        """An attribute the table does not list, inside a dummy or cleaned sequence: no original
        value survives but numbers and enumerated codes (measurements, value types, geometry)."""
        vr = element.vr
        if vr == "SQ":
            self._write_sequence(element, level)
        elif vr == "UI":
            self._unlisted_uid(element, level)
        elif vr in ("DA", "DT", "TM"):
            if "retain_long_full_dates" in self.options:
                self._copy(element, level)
            else:
                self._shift_date(element, level)
        elif level.mode == REPLACED and not element.empty and (
                vr == "DS" or element.tag in _MEASUREMENTS):
            self._replace_measurement(element, level)
        elif vr in _REPLACED_KEPT_VRS or vr == "DS" or element.empty:
            self._copy(element, level)
        elif level.mode == CLEANED and vr in TEXT_VRS and vr not in ("PN", "AE", "UR"):
            self._clean_text(element, level)
        else:
            self._write(element, DUMMY_BY_VR.get(vr, DUMMY_TEXT), level)

    def _replace_measurement(self, element: Element, level: _Level) -> None:
        """A measured value of a dummy tree: zero, as many values as it had (its VM)."""
        if element.vr == "DS":
            count = value_text(self.buffer, element, level.encodings).count("\\") + 1
            self._write(element, "\\".join(["0"] * count), level)
        else:
            self._write(element, _MEASUREMENTS[element.tag], level)

    def _code_item(self, elements: list[Element], level: _Level) -> None:
        """A coded entry: a standard code keeps its value and takes the standard's meaning;
        a local one (or one the standard does not define) keeps neither."""
        by_tag = {e.tag: e for e in elements}
        texts = {tag: value_text(self.buffer, by_tag[tag], level.encodings).strip()
                 for tag in (codes.CODING_SCHEME_DESIGNATOR, codes.CODE_VALUE) if tag in by_tag}
        meaning = codes.standard_meaning(texts.get(codes.CODING_SCHEME_DESIGNATOR, ""),
                                         texts.get(codes.CODE_VALUE, ""))
        coded = [e for e in elements if e.tag in codes.CODE_TAGS]
        self._clean_elements([e for e in elements if e.tag not in codes.CODE_TAGS], level)
        for element in coded:
            tag = element.tag
            if meaning is not None:
                if tag == codes.CODE_MEANING:
                    self._write(element, meaning, level)
                else:
                    self._copy(element, level)
            elif tag == codes.CODING_SCHEME_DESIGNATOR:
                self._write(element, codes.LOCAL_SCHEME, level)
            elif tag == codes.CODING_SCHEME_VERSION:
                continue  # the local scheme's version: Type 1C only with a version to name
            elif tag == codes.CODE_MEANING and level.mode == CLEANED:
                self._clean_text(element, level)
            else:
                self._write(element, codes.LOCAL_VALUE, level)
        level.out.sort(key=lambda entry: entry[0])

    def _marks(self, level: _Level) -> dict[int, bytes]:
        profile = self.policy.profile
        return _marks(profile.edition, profile.options, level.encoding, level.encodings)


@cache
def _marks(edition: str, options: tuple[Option, ...], encoding: Encoding,
           encodings: tuple[str, ...]) -> dict[int, bytes]:
    """PatientIdentityRemoved, the method in words and as CID 7050 codes, the dates' status
    (the same for every instance under one profile: encoded once)."""
    level = _Level(encoding, encodings, "")
    method = [
        f"PS3.15 {edition} Basic Application Confidentiality Profile"[:64],
        *(option.name[:64] for option in options),
        f"dicom-gateway {__version__}",
    ]
    codes = [("113100", "DCM", "Basic Application Confidentiality Profile")]
    codes += [(o.code, o.scheme, o.name) for o in options]
    items: list[list[Chunk]] = [
        [_plain(0x00080100, "SH", value, level), _plain(0x00080102, "SH", scheme, level),
         _plain(0x00080104, "LO", meaning, level)] for value, scheme, meaning in codes]
    keys = {o.key for o in options}
    longitudinal = ("MODIFIED" if "retain_long_modified_dates" in keys else
                    "UNMODIFIED" if "retain_long_full_dates" in keys else "REMOVED")
    return {
        IDENTITY_REMOVED: _plain(IDENTITY_REMOVED, "CS", "YES", level),
        METHOD: _plain(METHOD, "LO", method, level),
        METHOD_CODES: sequence_bytes(METHOD_CODES, items, encoding),
        LONGITUDINAL: _plain(LONGITUDINAL, "CS", longitudinal, level),
    }


def _merged(chunks: list[Chunk]) -> list[Chunk]:
    """Runs of small pieces joined: fewer, larger pieces to write; big ones are left alone."""
    merged: list[Chunk] = []
    run: list[Chunk] = []
    for chunk in chunks:
        if len(chunk) < 65536:
            run.append(chunk)
            continue
        if run:
            merged.append(b"".join(run))
            run = []
        merged.append(chunk)
    if run:
        merged.append(b"".join(run))
    return merged


def _plain(tag: int, vr: str, value: object, level: _Level) -> bytes:
    """An element the engine writes with a fixed value of its own (not leak-scanned)."""
    return element_bytes(tag, vr, encode_value(value, vr, level.encoding, level.encodings),
                         level.encoding)


def read_encoded_element(chunk: Chunk, encoding: Encoding) -> Element:
    return Reader(memoryview(chunk), encoding).read(0, len(chunk))[0]


@cache
def _element_name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@cache
def _paired_time(date_tag: int) -> int | None:
    """The TM attribute that completes a DA one (StudyDate - StudyTime), by their keywords."""
    keyword = keyword_for_tag(date_tag) or ""
    at = keyword.rfind("Date")
    if at < 0:
        return None
    paired = tag_for_keyword(keyword[:at] + "Time" + keyword[at + 4 :])
    return None if paired is None else int(paired)


def _drop_unconditioned(entries: dict[int, Chunk], profile: Profile) -> None:
    """Remove a conditional attribute whose condition's attribute the profile removed (unless
    an option keeps it on purpose)."""
    for dependent, condition in iod.REQUIRED_IF_PRESENT.items():
        kept_on_purpose = profile.action_for(dependent) == KEEP
        if dependent in entries and condition not in entries and not kept_on_purpose:
            del entries[dependent]


def _tags_of(elements: list[Element]) -> set[int]:
    return {e.tag for e in elements}


@cache
def _is_class_uid(tag: int) -> bool:
    return (keyword_for_tag(tag) or "").endswith(CLASS_UID_KEYWORDS_SUFFIXES)


def _own_values(policy: Policy) -> frozenset[str]:
    """Values the gateway itself writes; an already de-identified input may carry them too."""
    patient = policy.patient
    values = {DUMMY_TEXT, "ANONYMOUS", patient.fixed_id, patient.fixed_name}
    values.add(policy.replacement_institution_name)
    return frozenset(v.upper() for v in values if v)


_Handler = Callable[[_Instance, Element, _Level], None]


def _resolve_compound(action: str, element: Element, kind: str | None) -> _Handler:
    """X/Z, X/D, Z/D, X/Z/D, X/Z/U* for an attribute of IOD type ``kind`` ("1", "2", "3").

    Type 3 is removed where the action allows X; Type 2 is emptied (Z); Type 1 gets a dummy (a
    sequence: its structure, every value replaced). X/Z/U* (references to other images) keeps
    its items with their UIDs replaced whatever its type: removing or emptying them leaves a
    Common Instance Reference module that names series nothing refers to any more (dciodvfy on
    a segmentation: "ReferencedSeriesSequence present but Instance does not reference
    Instances"), and keyed UIDs identify no one. Without a type (an IOD or a place the tables
    do not know) a present attribute is never removed, since it may be required: it is emptied
    where emptiness is allowed (X/Z) and given a dummy where a value may be required. An
    attribute that came empty stays empty rather than gaining a dummy.
    """
    if action == "X/Z/U*":
        return _Instance._keep
    removable = "X" in action.split("/")
    if kind == "3" and removable:
        return _Instance._remove
    if kind == "2" or (kind == "3" and "Z" in action):
        return _Instance._zero
    if kind is None and action == "X/Z":
        return _Instance._zero
    if element.empty:
        return _Instance._zero
    return _Instance._dummy


_HANDLERS: dict[str, _Handler] = {
    REMOVE: _Instance._remove,
    ZERO: _Instance._zero,
    DUMMY: _Instance._dummy,
    KEEP: _Instance._keep,
    CLEAN: _Instance._clean_value,
    REPLACE_UID: _Instance._replace_uid,
}


@built_once
def _basic_profile() -> Profile:
    return build_profile(())
