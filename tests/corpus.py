"""A de-identification acceptance corpus: real instances with a unique marker in every place.

``build_corpus()`` takes a varied set of pydicom / pydicom-data test files (and a few instances
built here for SOP classes those lack), links some of them into one PET/CT + RT + SR study
(shared patient, study, series and frame of reference, references between instances), and plants
a unique, byte-greppable marker into every attribute of PS3.15 Table E.1-1 whose VR can hold one:
at the top level, three levels deep inside generic (unlisted) sequences, inside code items of
listed sequences, in SR content trees, in a private block of our own and in the vendors' private
text elements, and in the file meta. Each planted value is remembered as a :class:`Marker` with its
tag path, so a test can compute from the table whether it must be gone from the output under a
given set of E.3 options (:meth:`Marker.must_vanish`) and search for it in the output's raw bytes
(:func:`markers_found`).

``write_corpus(folder)`` writes the instances; ``run_anonymize`` runs the real offline command on
such a folder and collects what it wrote and quarantined.

Marker shapes (each unique within its instance, so found bytes name the place they came from):

* text (AE CS LO LT SH ST UT UC UR OB UN, vendor private text): ``MK000123X``;
* person names: ``MK000123X``, or Latin-1 / CJK letters in the ISO_IR 100 / ISO_IR 192 instances;
* UIDs: ``1.2.826.0.1.3680043.10.999.<1000000 + n>`` (one per original UID, so references keep
  matching);
* dates: ``YYYY0701`` with an odd year, one year per place: a date shift of under a year can
  never turn one marker into another of the same instance; DT: that date + ``120000``;
* times and decimals: ``235959.000123`` / ``999999.000123``; integers: ``9`` + seven digits.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

import pydicom
from deid_helpers import walk
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway.cli import CONFIG_ENV
from gateway.cli import main as gateway_main
from gateway.deid.private import standard_safe_private
from gateway.settings import SECRET_ENV

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = PROJECT_ROOT / "gateway" / "deid" / "data" / "ps315_annex_e.json"

MARKER_UID_ROOT = "1.2.826.0.1.3680043.10.999."
MARKER_CREATOR = "MARKER CORP"
MARKER_PRIVATE_GROUP = 0x0099

KEEP = "K"
CLEAN = "C"
# Sequence actions whose items are kept and judged attribute by attribute: K and C keep (clean)
# the sequence, X/Z/U* keeps items with their UIDs replaced. Under any other action (X, Z, D and
# the other compounds) the sequence's contents must go: a dummy sequence carries none of them.
WALKED_SEQUENCE_ACTIONS = frozenset({KEEP, CLEAN, "X/Z/U*"})
# Under C (clean) free text keeps only words of the clean vocabulary, so a marker (no such word)
# must go like the patient's name embedded next to it (Marker.where == "identity"); AE titles
# become keyed device names, dates and times move. Only codes (CS) and URIs (UR) are kept when
# they name nobody: a marker there may survive.
CLEAN_KEEPS_VRS = frozenset({"CS", "UR"})
# C-able free-text VRs long enough to carry "<marker> <patient's name>".
EMBEDDING_VRS = frozenset({"LO", "LT", "ST", "UT", "UC"})
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UT", "UC"})
RAW_VRS = frozenset({"OB", "OW", "UN", "OB or OW"})
PRIVATE_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "PN", "UT", "UC"})
# Unlisted leaves of coded and SR content planted when some enclosing sequence is listed.
CONTENT_LEAVES = frozenset({"CodeValue", "CodingSchemeDesignator", "CodeMeaning", "TextValue",
                            "NumericValue"})
# Generic, unlisted sequences that hold the nested plants: 1, 2 and 3 levels deep.
NEST = ("ReferencedSeriesSequence", "ReferencedInstanceSequence", "ReferencedSOPSequence")
TEXT_VALUE = int(Tag("TextValue"))
# An SR text holding this gets the patient's name embedded (a finding that names the patient).
IDENTITY_SLOT = "<patient>"
SHARED_PATIENT_TAGS = frozenset(int(Tag(k)) for k in ("PatientName", "PatientID", "PatientBirthDate"))
META_MARKER_TAGS = {
    0x00020016: "AE", 0x00020017: "AE", 0x00020018: "AE", 0x00020026: "UR",
    0x00020100: "UI", 0x00020102: "OB",
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"

Family = Literal["text", "uid", "digits", "time", "raw"]
Where = Literal["public", "private", "meta", "identity"]
NameStyle = Literal["ascii", "latin1", "cjk"]
Ancestors = tuple[tuple[int, int], ...]  # (sequence tag, item index) from the top


# --- the corpus: which files, and why --------------------------------------------------------

@dataclass(frozen=True)
class Source:
    name: str  # file name in the corpus folder
    testfile: str | None  # pydicom / pydicom-data test file, None: built here
    covers: str
    name_style: NameStyle = "ascii"


SOURCES: tuple[Source, ...] = (
    Source("CT_small.dcm", "CT_small.dcm",
           "CT, GE, GEMS_* private blocks, explicit VR LE, ISO_IR 100 (Latin-1 names)", "latin1"),
    Source("CT_small_slice2.dcm", None, "second CT slice of the same series and frame of reference"),
    Source("PT_built.dcm", None, "PET image of the same PET/CT study and frame of reference"),
    Source("MR_small_implicit.dcm", "MR_small_implicit.dcm", "MR, Toshiba, implicit VR LE"),
    Source("emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm",
           "Enhanced MR, 10 frames, functional groups, JPEG-LS lossless"),
    Source("examples_overlay.dcm", "examples_overlay.dcm",
           "MR, Siemens, overlay plane, SIEMENS MEDCOM private blocks"),
    Source("OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_rle_2frame.dcm",
           "US multi-frame, RLE lossless, Philips US private blocks"),
    Source("ExplVR_BigEnd.dcm", "ExplVR_BigEnd.dcm", "US RGB, GE, explicit VR big endian"),
    Source("examples_ybr_color.dcm", "examples_ybr_color.dcm",
           "US multi-frame YBR, JPEG baseline, SonoSite private block"),
    Source("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
           "US, Philips, JPEG lossless SV1, KINETDX / Philips Imaging DD private blocks"),
    Source("reportsi.dcm", "reportsi.dcm", "Basic Text SR"),
    Source("test-SR.dcm", "test-SR.dcm", "Comprehensive SR with verifying observers"),
    Source("SR_enhanced_built.dcm", None, "Enhanced SR, built"),
    Source("SR_comprehensive_built.dcm", None,
           "Comprehensive SR, built: 4-level content tree, observer context, references"),
    Source("rtstruct.dcm", "rtstruct.dcm", "RT Structure Set referencing the CT slices"),
    Source("rtplan.dcm", "rtplan.dcm", "RT Plan referencing the structure set, implicit VR"),
    Source("rtdose.dcm", "rtdose.dcm", "RT Dose, 15 frames, referencing the plan, implicit VR"),
    Source("waveform_ecg.dcm", "waveform_ecg.dcm", "12-lead ECG waveform, Mortara private block"),
    Source("JPEG2000.dcm", "JPEG2000.dcm", "NM secondary capture, JPEG 2000, GEMS_GENIE_1 private"),
    Source("JPEG-lossy.dcm", "JPEG-lossy.dcm", "NM secondary capture, JPEG extended (lossy)"),
    Source("image_dfl.dcm", "image_dfl.dcm", "secondary capture, deflated explicit VR LE"),
    Source("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_dcmtk.dcm",
           "secondary capture RGB, JPEG baseline, ISO_IR 192 (CJK names)", "cjk"),
    Source("liver_1frame.dcm", "liver_1frame.dcm", "Segmentation"),
)
STUDY_GROUP = ("CT_small_slice2.dcm", "PT_built.dcm", "SR_comprehensive_built.dcm", "rtstruct.dcm",
               "rtplan.dcm", "rtdose.dcm")


# --- the table --------------------------------------------------------------------------------

@cache
def table_rows() -> dict[int, dict[str, Any]]:
    """Table E.1-1 rows naming one tag, by tag."""
    data = json.loads(TABLE_PATH.read_text("utf-8"))
    return {int(r["pattern"], 16): r for r in data["attributes"]
            if re.fullmatch(r"[0-9A-Fa-f]{8}", r["pattern"])}


@cache
def pattern_rows() -> dict[str, dict[str, Any]]:
    data = json.loads(TABLE_PATH.read_text("utf-8"))
    return {r["pattern"].lower(): r for r in data["attributes"]
            if not re.fullmatch(r"[0-9A-Fa-f]{8}", r["pattern"])}


@cache
def option_keys() -> tuple[str, ...]:
    data = json.loads(TABLE_PATH.read_text("utf-8"))
    return tuple(o["key"] for o in data["options"])


def row_for(tag: int) -> dict[str, Any] | None:
    row = table_rows().get(tag)
    if row is not None:
        return row
    group, element = tag >> 16, tag & 0xFFFF
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return pattern_rows()["50xxxxxx"]
    if 0x6000 <= group <= 0x60FF and group % 2 == 0 and element in (0x3000, 0x4000):
        return pattern_rows()[f"60xx{element:04x}"]
    return None


def resolve(row: dict[str, Any], options: Iterable[str]) -> str:
    """The row's action under the Basic profile plus ``options``: an option that keeps wins over
    one that cleans, and either over the basic action (each is a decision to retain more)."""
    chosen = {row["options"].get(o) for o in options} - {None}
    if KEEP in chosen:
        return KEEP
    if CLEAN in chosen:
        return CLEAN
    return str(row["basic"])


def action_for(tag: int, options: Iterable[str]) -> str | None:
    """Resolved action of a public tag; None when the table does not list it."""
    row = row_for(tag)
    return None if row is None else resolve(row, options)


def tag_name(tag: int) -> str:
    row = table_rows().get(tag)
    return (keyword_for_tag(tag) or (row["keyword"] if row else None)
            or f"({tag >> 16:04X},{tag & 0xFFFF:04X})")


def path_text(ancestors: Ancestors, tag: int) -> str:
    return "".join(f"{tag_name(t)}[{i}]." for t, i in ancestors) + tag_name(tag)


# --- markers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Marker:
    """One planted value: where it is, and the bytes a grep of an output looks for."""

    instance: str
    ancestors: Ancestors
    tag: int
    vr: str
    key: bytes  # what markers_found reports (a DT's date part, otherwise the value's bytes)
    family: Family
    where: Where
    # Private creators of the private elements on the path (tag -> creator), for the safe list.
    creators: tuple[tuple[int, str], ...] = ()

    @property
    def path(self) -> str:
        return path_text(self.ancestors, self.tag)

    def governing(self, options: Iterable[str]) -> tuple[str, str]:
        """(action, attribute) that decides the marker's fate under ``options``.

        Walks from the top: a private element, or a listed sequence whose action does not keep
        its items (X, Z, D...), decides for everything inside; otherwise the leaf's own action
        does (K for an unlisted leaf inside kept items).
        """
        options = tuple(options)
        creators = dict(self.creators)
        for seq_tag, _ in self.ancestors:
            if (seq_tag >> 16) & 1:
                if not self._private_kept(seq_tag, creators, options):
                    return "X", tag_name(seq_tag)  # private, not on the safe list
                continue
            action = action_for(seq_tag, options)
            if action is not None and action not in WALKED_SEQUENCE_ACTIONS:
                return action, tag_name(seq_tag)
        if self.where == "identity":
            return "identity", self.path
        if (self.tag >> 16) & 1:
            kept = self._private_kept(self.tag, creators, options)
            return (CLEAN if kept else "X"), self.path
        action = action_for(self.tag, options)
        if action is None:
            # The gateway writes a file meta of its own: none of the sender's survives.
            return ("X" if self.where == "meta" else KEEP), self.path
        return action, self.path

    @staticmethod
    def _private_kept(tag: int, creators: dict[int, str], options: tuple[str, ...]) -> bool:
        creator = creators.get(tag)
        return (creator is not None and "retain_safe_private" in options
                and standard_safe_private().allows(creator, tag >> 16, tag & 0xFFFF))

    def must_vanish(self, options: Iterable[str]) -> bool:
        options = tuple(options)
        if self.where == "public" and action_for(self.tag, options) == KEEP:
            return False  # kept by the options: expected to survive, wherever it is
        action, _ = self.governing(options)
        if action == "identity":
            return True
        if action == KEEP:
            return False
        if action == CLEAN:
            return self.vr not in CLEAN_KEEPS_VRS and not (self.tag >> 16) & 1
        return True

    def describe(self, options: Iterable[str]) -> str:
        action, by = self.governing(options)
        what = "the patient's name embedded in" if self.where == "identity" else self.where
        decided = "" if by == self.path else f" (decided by {by})"
        return f"{self.instance}: {what} {self.path} [{self.vr}] action {action}{decided}"


@dataclass
class CorpusInstance:
    name: str
    source: Source
    dataset: Dataset
    markers: list[Marker] = field(default_factory=list)
    # (path in this instance, target instance, target tag): UID references to check after
    # de-identification.
    references: list[tuple[Ancestors, int, str, int]] = field(default_factory=list)

    def __repr__(self) -> str:  # short: pytest prints fixtures in tracebacks
        return f"CorpusInstance({self.name!r}, {len(self.markers)} markers)"

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    def uid_values(self) -> dict[str, str]:
        """Planted UID -> path, for every planted UID (first place it occurs)."""
        found: dict[str, str] = {}
        for marker in self.markers:
            if marker.family == "uid":
                found.setdefault(marker.key.decode(), marker.path)
        return found


@dataclass
class _Shared:
    """State shared by the instances of one corpus: counters and value maps."""

    counter: int = 0
    uids: dict[str, str] = field(default_factory=dict)  # original UID -> planted marker UID
    patient: dict[tuple[int, str], tuple[str, bytes, Family]] = field(default_factory=dict)
    shared_dates: int = 0

    def next(self) -> int:
        self.counter += 1
        return self.counter


_LATIN_DIGITS = "ÀÁÂÃÄÅÆÇÈÉ"
_CJK_DIGITS = "〇一二三四五六七八九"


class _Planter:
    """Plants markers into one instance and records them."""

    def __init__(self, shared: _Shared, name: str, ds: Dataset, style: NameStyle) -> None:
        self.shared = shared
        self.name = name
        self.ds = ds
        self.style = style
        self.codec = {"latin1": "latin-1", "cjk": "utf-8"}.get(style, "ascii")
        self.markers: list[Marker] = []
        self.dates = 0
        self.patient_name = ""  # the instance's planted PatientName, embedded in C texts
        self.patient_key = b""
        self.patient_family: Family = "text"

    # --- values -----------------------------------------------------------------------------

    def _text(self) -> str:
        return f"MK{self.shared.next():06d}X"

    def _person(self) -> tuple[str, Family]:
        n = f"{self.shared.next():06d}"
        if self.style == "latin1":
            return "MKÄ" + "".join(_LATIN_DIGITS[int(d)] for d in n) + "Ö", "raw"
        if self.style == "cjk":
            return "山田" + "".join(_CJK_DIGITS[int(d)] for d in n), "raw"
        return f"MK{n}X", "text"

    def _date(self) -> str:
        # One odd year per place: a shift of under a year lands on an even year or elsewhere
        # in the same year, never on another marker of this instance.
        year = 1001 + 2 * self.dates
        self.dates += 1
        assert year < 5000, "too many dates for one instance"
        return f"{year:04d}0701"

    def _new_uid(self) -> str:
        # Fixed width: a grep needs no delimiter (the next element's tag bytes may be digits).
        return f"{MARKER_UID_ROOT}{1000000 + self.shared.next()}"

    def _uid(self, original: str | None = None) -> str:
        if original is None:
            return self._new_uid()
        original = original.strip().rstrip("\x00")
        if original not in self.shared.uids:
            self.shared.uids[original] = self._new_uid()
        return self.shared.uids[original]

    def value(self, vr: str, original: Any = None) -> tuple[Any, bytes, Family] | None:
        """(value to set, bytes to grep for, family) for a marker of ``vr``; None: not checkable."""
        if vr in TEXT_VRS:
            text = self._text()
            return text, text.encode(), "text"
        if vr == "PN":
            person, family = self._person()
            return person, person.encode(self.codec), family
        if vr == "UR":
            text = self._text()
            return f"http://example.invalid/{text}", text.encode(), "text"
        if vr == "DA":
            date = self._date()
            return date, date.encode(), "digits"
        if vr == "DT":
            date = self._date()
            return date + "120000", date.encode(), "digits"
        if vr == "TM":
            text = f"235959.{self.shared.next():06d}"
            return text, text.encode(), "time"
        if vr == "DS":
            text = f"999999.{self.shared.next():06d}"
            return text, text.encode(), "time"
        if vr == "IS":
            text = f"9{self.shared.next():07d}"
            return text, text.encode(), "digits"
        if vr == "UI":
            values = original if isinstance(original, (list, MultiValue)) else [original]
            if original is None or not any(str(v).strip() for v in values):
                uid = self._uid()
                return uid, uid.encode(), "uid"
            uids = [self._uid(str(v)) for v in values]
            # Several values: the first is the marker grepped for; all are mapped consistently.
            return (uids if len(uids) > 1 else uids[0]), uids[0].encode(), "uid"
        if vr in RAW_VRS:
            text = self._text()
            return (text + " ").encode(), text.encode(), "text"
        return None  # AS, US, SS, FL, AT...: a value that cannot be unique or grepped

    # --- recording ----------------------------------------------------------------------------

    def record(self, ancestors: Ancestors, tag: int, vr: str, key: bytes, family: Family,
               where: Where, creators: tuple[tuple[int, str], ...] = ()) -> None:
        self.markers.append(Marker(self.name, ancestors, tag, vr, key, family, where, creators))

    def put(self, target: Dataset, ancestors: Ancestors, tag: int, vr: str,
            creators: tuple[tuple[int, str], ...] = (), original: Any = None) -> bool:
        """Set ``tag`` in ``target`` to a marker of ``vr``; False if ``vr`` cannot hold one."""
        shared_key = (tag, str(original)) if not ancestors and tag in SHARED_PATIENT_TAGS else None
        made = self._shared_patient_value(shared_key, vr) if shared_key else self.value(vr, original)
        if made is None:
            return False
        value, key, family = made
        if self._embeds_identity(tag, vr, original):
            # A C attribute (or SR text): cleaning must remove the patient's name from it.
            value = f"{value} {self.patient_name}"
            self.record(ancestors, tag, vr, self.patient_key, self.patient_family, "identity",
                        creators)
        where: Where = "private" if (tag >> 16) & 1 or creators else "public"
        target[tag] = DataElement(tag, vr, value)
        self.record(ancestors, tag, vr, key, family, where, creators)
        return True

    def _embeds_identity(self, tag: int, vr: str, original: Any) -> bool:
        if not self.patient_name or (tag >> 16) & 1:
            return False
        if tag == TEXT_VALUE:
            return IDENTITY_SLOT in str(original or "")
        return vr in EMBEDDING_VRS and _cleaned_somewhere(tag) and not _kept_somewhere(tag)

    def _shared_patient_value(self, key: tuple[int, str], vr: str) -> tuple[Any, bytes, Family] | None:
        """One patient, one set of identity markers, across the instances that share it."""
        if key[1] in ("", "None") or key not in self.shared.patient:
            if vr == "DA":
                # Reserved years (5001+), apart from the per-instance dates.
                date = f"{5001 + 2 * self.shared.shared_dates:04d}0701"
                self.shared.shared_dates += 1
                made: tuple[Any, bytes, Family] | None = (date, date.encode(), "digits")
            else:
                made = self.value(vr)
            if made is None or key[1] in ("", "None"):
                return made
            self.shared.patient[key] = made
        return self.shared.patient[key]

    # --- planting -----------------------------------------------------------------------------

    def plant(self) -> None:
        ds = self.ds
        self._plant_patient_name()
        self._existing(ds, (), ())
        self._missing(ds, (), top=True)
        self._private_block(ds, (), top=True)
        item, ancestors = ds, cast(Ancestors, ())
        for keyword in NEST:
            item, ancestors = self._nested_item(item, ancestors, keyword)
            self._missing(item, ancestors, top=False)
            self._private_block(item, ancestors, top=False)
        self._file_meta()

    def _plant_patient_name(self) -> None:
        tag = int(Tag("PatientName"))
        original = self.ds.get("PatientName")
        self.put(self.ds, (), tag, "PN", original=None if original is None else str(original))
        planted = self.markers[-1]
        self.patient_name = str(self.ds.PatientName)
        self.patient_key, self.patient_family = planted.key, planted.family

    def _existing(self, ds: Dataset, ancestors: Ancestors,
                  creators: tuple[tuple[int, str], ...]) -> None:
        """Replace the values of listed attributes already present, at every level."""
        listed_above = any(not (t >> 16) & 1 and row_for(t) is not None for t, _ in ancestors)
        for elem in list(ds):
            tag = int(elem.tag)
            if tag >> 16 == 0x0002 or (not ancestors and tag == int(Tag("PatientName"))):
                continue
            if elem.tag.is_private:
                self._existing_private(ds, elem, ancestors, creators)
            elif elem.VR == "SQ":
                for index, item in enumerate(elem.value):
                    self._existing(item, (*ancestors, (tag, index)), creators)
            elif row_for(tag) is not None:
                if tag >> 16 in range(0x6000, 0x6100) and tag & 0xFFFF == 0x3000:
                    continue  # overlay bits: kept as they are (their removal is checked elsewhere)
                self.put(ds, ancestors, tag, _plant_vr(elem.VR, tag), creators, original=elem.value)
            elif listed_above and elem.keyword in CONTENT_LEAVES:
                self.put(ds, ancestors, tag, elem.VR, creators, original=elem.value)

    def _existing_private(self, ds: Dataset, elem: DataElement, ancestors: Ancestors,
                          creators: tuple[tuple[int, str], ...]) -> None:
        tag = int(elem.tag)
        if elem.tag.element < 0x1000:
            return  # a creator: names a vendor, not a person
        creator_elem = ds.get(Tag(elem.tag.group, elem.tag.element >> 8))
        creator = "" if creator_elem is None else str(creator_elem.value)
        inner = (*creators, (tag, creator))
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                self._existing(item, (*ancestors, (tag, index)), inner)
        elif elem.VR in PRIVATE_TEXT_VRS and isinstance(elem.value, str) and elem.value.strip():
            self.put(ds, ancestors, tag, elem.VR, inner)

    def _missing(self, target: Dataset, ancestors: Ancestors, top: bool) -> None:
        """Add every listed attribute not yet present."""
        for tag, row in table_rows().items():
            group = tag >> 16
            if group in (0x0000, 0x0002) or tag in target:
                continue  # command / file meta elements: not data set attributes
            vr = _plant_vr(row["vr"], tag)
            if vr == "SQ":
                self._sequence(target, ancestors, tag)
            else:
                self.put(target, ancestors, tag, vr)
        if top:
            self.put(target, ancestors, 0x60004000, "LT")  # Overlay Comments
            self.put(target, ancestors, 0x50002500, "LO")  # Curve Label
            self.put(target, ancestors, 0x50003000, "OB")  # Curve Data

    def _sequence(self, target: Dataset, ancestors: Ancestors, tag: int) -> None:
        """A listed sequence with one item of codes, a reference and (for some) more."""
        item = Dataset()
        inner = (*ancestors, (tag, 0))
        self._code_item(item, inner)
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        self.put(item, inner, int(Tag("ReferencedSOPInstanceUID")), "UI")
        keyword = keyword_for_tag(tag)
        if keyword == "OperatorIdentificationSequence":
            person = Dataset()
            self._code_item(person, (*inner, (int(Tag("PersonIdentificationCodeSequence")), 0)))
            item.PersonIdentificationCodeSequence = Sequence([person])
            self.put(item, inner, int(Tag("InstitutionName")), "LO")
        elif keyword == "OtherPatientIDsSequence":
            self.put(item, inner, int(Tag("PatientID")), "LO")
            self.put(item, inner, int(Tag("IssuerOfPatientID")), "LO")
        target[tag] = DataElement(tag, "SQ", Sequence([item]))

    def _code_item(self, item: Dataset, ancestors: Ancestors) -> None:
        for keyword, vr in (("CodeValue", "SH"), ("CodingSchemeDesignator", "SH"),
                            ("CodeMeaning", "LO")):
            self.put(item, ancestors, int(Tag(keyword)), vr)

    def _nested_item(self, parent: Dataset, ancestors: Ancestors,
                     keyword: str) -> tuple[Dataset, Ancestors]:
        item = Dataset()
        if keyword not in parent:
            parent[keyword] = DataElement(Tag(keyword), "SQ", Sequence())
        parent[keyword].value.append(item)
        return item, (*ancestors, (int(Tag(keyword)), len(parent[keyword].value) - 1))

    def _private_block(self, target: Dataset, ancestors: Ancestors, top: bool) -> None:
        block = target.private_block(MARKER_PRIVATE_GROUP, MARKER_CREATOR, create=True)
        def creator_of(offset: int) -> tuple[int, str]:
            return int(block.get_tag(offset)), MARKER_CREATOR

        for offset, vr in ((0x10, "LO"), (0x11, "PN"), (0x12, "UN")):
            tag = int(block.get_tag(offset))
            self.put(target, ancestors, tag, vr, (creator_of(offset),))
        if top:
            # A private sequence holding public attributes: all of it goes with the block.
            tag = int(block.get_tag(0x13))
            item = Dataset()
            inner = (*ancestors, (tag, 0))
            creators = (creator_of(0x13),)
            self.put(item, inner, int(Tag("InstitutionName")), "LO", creators)
            self.put(item, inner, int(Tag("PerformingPhysicianName")), "PN", creators)
            self.put(item, inner, int(Tag("StudyDate")), "DA", creators)
            target[tag] = DataElement(tag, "SQ", Sequence([item]))

    def _file_meta(self) -> None:
        meta = self.ds.file_meta
        for tag, vr in META_MARKER_TAGS.items():
            made = self.value(vr)
            assert made is not None
            value, key, family = made
            meta[tag] = DataElement(tag, vr, value)
            self.record((), tag, vr, key, family, "meta")
        meta.MediaStorageSOPClassUID = self.ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = self.ds.SOPInstanceUID


def _plant_vr(vr: str | None, tag: int) -> str:
    if vr in (None, "UN"):
        try:
            known = dictionary_VR(tag)
        except KeyError:
            return "UN"
        vr = known
    if vr == "OB or OW":
        return "OB"
    if vr == "US or SS":
        return "US"
    return str(vr)


@cache
def _cleaned_somewhere(tag: int) -> bool:
    row = row_for(tag)
    return row is not None and CLEAN in row["options"].values()


@cache
def _kept_somewhere(tag: int) -> bool:
    row = row_for(tag)
    return row is not None and KEEP in row["options"].values()


# --- building the instances -------------------------------------------------------------------

def _read_testfile(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing (is pydicom-data installed?)"
    return pydicom.dcmread(path, force=True)


def _ensure_meta(ds: Dataset, syntax: str) -> None:
    meta = getattr(ds, "file_meta", None)
    if not isinstance(meta, FileMetaDataset) or "TransferSyntaxUID" not in meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(syntax)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _content(relationship: str, value_type: str, concept: Dataset, **values: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _built_sr(sop_class: str, patient: Dataset, evidence: list[Dataset], number: int) -> Dataset:
    """An SR document with a 4-level content tree holding every value type the table touches."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"2.25.{9000 + number}"
    ds.StudyInstanceUID = patient.StudyInstanceUID
    ds.SeriesInstanceUID = f"2.25.{9100 + number}"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, patient.get(keyword, ""))
    ds.Modality = "SR"
    ds.Manufacturer = "dicom-gateway tests"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20240102", "101010"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("126000", "DCM", "Imaging Measurement Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Observer^Verifying"
    observer.VerifyingOrganization = "Verifying Hospital"
    observer.VerificationDateTime = "20240102101010"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([_code("V123", "L", "Dr V")])
    ds.VerifyingObserverSequence = Sequence([observer])
    ds.PerformedProcedureCodeSequence = Sequence()
    series: dict[str, list[Dataset]] = {}
    for image in evidence:
        series.setdefault(str(image.SeriesInstanceUID), []).append(image)
    study = Dataset()
    study.StudyInstanceUID = patient.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence()
    for series_uid, images in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = Sequence(
            [_reference(str(i.SOPClassUID), str(i.SOPInstanceUID)) for i in images])
        study.ReferencedSeriesSequence.append(item)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])

    level4 = [
        _content("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"), TextValue="Deep finding"),
        _content("CONTAINS", "PNAME", _code("121008", "DCM", "Person Observer Name"),
                 PersonName="Deep^Observer"),
    ]
    level3 = [
        _content("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"), TextValue="Inner note"),
        _content("CONTAINS", "CONTAINER", _code("125007", "DCM", "Measurement Group"),
                 ContinuityOfContent="SEPARATE", ContentSequence=Sequence(level4)),
    ]
    measured = Dataset()
    measured.NumericValue = "12.5"
    measured.MeasurementUnitsCodeSequence = Sequence([_code("mm", "UCUM", "millimeter")])
    image_item = _content("CONTAINS", "IMAGE", _code("121200", "DCM", "Illustration"))
    image_item.ReferencedSOPSequence = Sequence(
        [_reference(str(evidence[0].SOPClassUID), str(evidence[0].SOPInstanceUID))])
    level2 = [
        _content("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"),
                 TextValue=f"Mass noted {IDENTITY_SLOT}"),
        _content("CONTAINS", "CODE", _code("121071", "DCM", "Finding"),
                 ConceptCodeSequence=Sequence([_code("T-04000", "SRT", "Breast")])),
        _content("CONTAINS", "NUM", _code("121206", "DCM", "Distance"),
                 MeasuredValueSequence=Sequence([measured])),
        _content("CONTAINS", "DATETIME", _code("111060", "DCM", "Study Date"),
                 DateTime="20240102101010"),
        _content("CONTAINS", "DATE", _code("111060", "DCM", "Study Date"), Date="20240102"),
        _content("CONTAINS", "TIME", _code("111061", "DCM", "Study Time"), Time="101010"),
        _content("CONTAINS", "UIDREF", _code("121018", "DCM", "Procedure Study Instance UID"),
                 UID=str(patient.StudyInstanceUID)),
        image_item,
        _content("CONTAINS", "CONTAINER", _code("111028", "DCM", "Image Library"),
                 ContinuityOfContent="SEPARATE", ContentSequence=Sequence(level3)),
    ]
    ds.ContentSequence = Sequence([
        _content("HAS OBS CONTEXT", "PNAME", _code("121008", "DCM", "Person Observer Name"),
                 PersonName="Observer^Context"),
        _content("CONTAINS", "CONTAINER", _code("121070", "DCM", "Findings"),
                 ContinuityOfContent="SEPARATE", ContentSequence=Sequence(level2)),
    ])
    return ds


def _pet_from_ct(ct: Dataset) -> Dataset:
    pt = copy.deepcopy(ct)
    pt.SOPClassUID = PET_IMAGE_STORAGE
    pt.file_meta.MediaStorageSOPClassUID = UID(PET_IMAGE_STORAGE)
    pt.SOPInstanceUID = f"{ct.SOPInstanceUID}.7"
    pt.SeriesInstanceUID = f"{ct.SeriesInstanceUID}.7"
    pt.Modality = "PT"
    pt.Units, pt.DecayCorrection = "BQML", "START"
    pt.CorrectedImage = ["ATTN", "DECY"]
    pt.SeriesType = ["STATIC", "IMAGE"]
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadionuclideTotalDose = "350000000"
    drug.RadionuclideHalfLife = "6586.2"
    drug.RadiopharmaceuticalStartTime = "093000"
    pt.RadiopharmaceuticalInformationSequence = Sequence([drug])
    for keyword in ("KVP", "XRayTubeCurrent", "Exposure", "ConvolutionKernel"):
        if keyword in pt:
            delattr(pt, keyword)
    return pt


def _originals() -> dict[str, Dataset]:
    """The unplanted instances, linked into one PET/CT + RT + SR study where it says so."""
    found = {s.name: _read_testfile(s.testfile) for s in SOURCES if s.testfile}
    ct = found["CT_small.dcm"]
    slice2 = copy.deepcopy(ct)
    slice2.SOPInstanceUID = f"{ct.SOPInstanceUID}.2"
    slice2.InstanceNumber = 2
    found["CT_small_slice2.dcm"] = slice2
    found["PT_built.dcm"] = _pet_from_ct(ct)
    found["SR_comprehensive_built.dcm"] = _built_sr(COMPREHENSIVE_SR_STORAGE, ct,
                                                    [ct, found["PT_built.dcm"]], 1)
    other = found["MR_small_implicit.dcm"]
    found["SR_enhanced_built.dcm"] = _built_sr(ENHANCED_SR_STORAGE, other, [other], 2)
    _link_rt(ct, slice2, found["rtstruct.dcm"], found["rtplan.dcm"], found["rtdose.dcm"])
    for name in STUDY_GROUP:
        ds = found[name]
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID"):
            setattr(ds, keyword, ct.get(keyword))
        ds.SpecificCharacterSet = "ISO_IR 100"  # the patient's name is written in Latin-1
        if name != "SR_comprehensive_built.dcm":
            ds.FrameOfReferenceUID = ct.FrameOfReferenceUID
    _ensure_meta(found["rtstruct.dcm"], ImplicitVRLittleEndian)
    return found


def _link_rt(ct: Dataset, slice2: Dataset, struct: Dataset, plan: Dataset, dose: Dataset) -> None:
    frame = struct.ReferencedFrameOfReferenceSequence[0]
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    series.SeriesInstanceUID = ct.SeriesInstanceUID
    series.ContourImageSequence = Sequence(
        [_reference(CT_IMAGE_STORAGE, str(i.SOPInstanceUID)) for i in (ct, slice2)])
    for roi in struct.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = ct.FrameOfReferenceUID
    plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = struct.SOPInstanceUID
    dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = plan.SOPInstanceUID


def _tag(keyword: str) -> int:
    return int(Tag(keyword))


# (instance, path, target instance, target tag): these must still match after de-identification.
REFERENCES: tuple[tuple[str, Ancestors, int, str, int], ...] = (
    ("CT_small_slice2.dcm", (), _tag("SeriesInstanceUID"), "CT_small.dcm", _tag("SeriesInstanceUID")),
    ("CT_small_slice2.dcm", (), _tag("FrameOfReferenceUID"), "CT_small.dcm",
     _tag("FrameOfReferenceUID")),
    ("PT_built.dcm", (), _tag("FrameOfReferenceUID"), "CT_small.dcm", _tag("FrameOfReferenceUID")),
    ("PT_built.dcm", (), _tag("StudyInstanceUID"), "CT_small.dcm", _tag("StudyInstanceUID")),
    ("rtstruct.dcm", ((_tag("ReferencedFrameOfReferenceSequence"), 0),), _tag("FrameOfReferenceUID"),
     "CT_small.dcm", _tag("FrameOfReferenceUID")),
    ("rtstruct.dcm", ((_tag("ReferencedFrameOfReferenceSequence"), 0),
                      (_tag("RTReferencedStudySequence"), 0), (_tag("RTReferencedSeriesSequence"), 0),
                      (_tag("ContourImageSequence"), 0)),
     _tag("ReferencedSOPInstanceUID"), "CT_small.dcm", _tag("SOPInstanceUID")),
    ("rtstruct.dcm", ((_tag("ReferencedFrameOfReferenceSequence"), 0),
                      (_tag("RTReferencedStudySequence"), 0), (_tag("RTReferencedSeriesSequence"), 0),
                      (_tag("ContourImageSequence"), 1)),
     _tag("ReferencedSOPInstanceUID"), "CT_small_slice2.dcm", _tag("SOPInstanceUID")),
    ("rtstruct.dcm", ((_tag("ReferencedFrameOfReferenceSequence"), 0),
                      (_tag("RTReferencedStudySequence"), 0), (_tag("RTReferencedSeriesSequence"), 0)),
     _tag("SeriesInstanceUID"), "CT_small.dcm", _tag("SeriesInstanceUID")),
    ("rtplan.dcm", ((_tag("ReferencedStructureSetSequence"), 0),), _tag("ReferencedSOPInstanceUID"),
     "rtstruct.dcm", _tag("SOPInstanceUID")),
    ("rtdose.dcm", ((_tag("ReferencedRTPlanSequence"), 0),), _tag("ReferencedSOPInstanceUID"),
     "rtplan.dcm", _tag("SOPInstanceUID")),
    ("SR_comprehensive_built.dcm",
     ((_tag("CurrentRequestedProcedureEvidenceSequence"), 0), (_tag("ReferencedSeriesSequence"), 0),
      (_tag("ReferencedSOPSequence"), 0)),
     _tag("ReferencedSOPInstanceUID"), "CT_small.dcm", _tag("SOPInstanceUID")),
    ("SR_comprehensive_built.dcm",
     ((_tag("CurrentRequestedProcedureEvidenceSequence"), 0), (_tag("ReferencedSeriesSequence"), 1),
      (_tag("ReferencedSOPSequence"), 0)),
     _tag("ReferencedSOPInstanceUID"), "PT_built.dcm", _tag("SOPInstanceUID")),
    ("SR_comprehensive_built.dcm", ((_tag("CurrentRequestedProcedureEvidenceSequence"), 0),),
     _tag("StudyInstanceUID"), "CT_small.dcm", _tag("StudyInstanceUID")),
)


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """No value validation or warnings: some source files carry odd values, and validating
    ~80,000 planted values would triple the build time."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def build_corpus() -> list[CorpusInstance]:
    """Every corpus instance with its markers planted (deterministic: the same on every call)."""
    instances = []
    with _quiet_pydicom():
        originals = _originals()
        shared = _Shared()
        for source in SOURCES:
            ds = originals[source.name]
            _ensure_meta(ds, ExplicitVRLittleEndian)
            planter = _Planter(shared, source.name, ds, source.name_style)
            planter.plant()
            instance = CorpusInstance(source.name, source, ds, planter.markers)
            instances.append(instance)
    by_name = {i.name: i for i in instances}
    for name, ancestors, tag, target, target_tag in REFERENCES:
        by_name[name].references.append((ancestors, tag, target, target_tag))
    return instances


def encode(instance: CorpusInstance) -> bytes:
    buffer = io.BytesIO()
    with _quiet_pydicom():
        instance.dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_corpus(folder: Path) -> list[CorpusInstance]:
    """Build the corpus and write each instance as ``folder/<name>``."""
    folder.mkdir(parents=True, exist_ok=True)
    instances = build_corpus()
    for instance in instances:
        (folder / instance.name).write_bytes(encode(instance))
    return instances


# --- searching outputs -----------------------------------------------------------------------

_TEXT_RE = re.compile(rb"MK\d{6}X")
_UID_RE = re.compile(re.escape(MARKER_UID_ROOT.encode()) + rb"\d{7}")
_DIGITS_RE = re.compile(rb"\d{8,}")
_TIME_RE = re.compile(rb"\d{6}\.\d{6}")


def searchable(data: bytes) -> bytes:
    """A Part 10 file's bytes as a grep must see them: a deflated data set inflated."""
    if DeflatedExplicitVRLittleEndian.encode() not in data[:1024]:
        return data
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # after (0002,0000) + group
    try:
        return data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    except zlib.error:
        return data  # not what it says: searched as it is


def _tokens(data: bytes) -> set[bytes]:
    """Every marker-shaped token in ``data`` (non-ASCII name markers aside)."""
    found: set[bytes] = set(_TEXT_RE.findall(data)) | set(_UID_RE.findall(data))
    found |= set(_TIME_RE.findall(data))
    for run in _DIGITS_RE.findall(data):
        found.update(run[i : i + 8] for i in range(len(run) - 7))
    return found


def markers_found(data: bytes, markers: Iterable[Marker]) -> set[bytes]:
    """The keys of ``markers`` that occur in ``data`` (a file's bytes, see ``searchable``)."""
    markers = list(markers)
    hits = _tokens(data) & {m.key for m in markers}
    hits.update(m.key for m in markers if m.family == "raw" and m.key in data)
    return hits


def leaked_markers(data: bytes, instance: CorpusInstance, options: Iterable[str]) -> list[Marker]:
    """The instance's markers that must be gone under ``options`` yet occur in ``data``.

    A value planted in several places (a shared UID, the patient's name) is only looked for
    when every place it was planted must lose it: a grep cannot tell the places apart.
    """
    options = tuple(options)
    vanishing = [m for m in instance.markers if m.must_vanish(options)]
    surviving = {m.key for m in instance.markers if not m.must_vanish(options)}
    wanted = [m for m in vanishing if m.key not in surviving]
    found = markers_found(searchable(data), wanted)
    return [m for m in wanted if m.key in found]


def locate(data: bytes, keys: Iterable[bytes]) -> dict[bytes, list[str]]:
    """For each of ``keys``, the paths of the output elements whose value holds it (read once;
    for failure messages)."""
    keys = set(keys)
    places: dict[bytes, list[str]] = {key: [] for key in keys}
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - a message helper: say why instead of failing
        return {key: [f"<unreadable output: {type(exc).__name__}>"] for key in keys}
    raw_keys = [k for k in keys if not _tokens(k) & {k}]
    meta = getattr(ds, "file_meta", Dataset())
    for label, dataset in (("file meta ", meta), ("", ds)):
        for path, elem in walk(dataset):
            value = _raw_value(elem)
            held = (_tokens(value) & keys) | {k for k in raw_keys if k in value}
            for key in held:
                places[key].append(label + path)
    return {key: found or ["<not in any decoded element>"] for key, found in places.items()}


def _raw_value(elem: DataElement) -> bytes:
    value = elem.value
    if isinstance(value, bytes):
        return value
    if isinstance(value, (list, MultiValue)):
        return b"\\".join(_raw_text(v) for v in value)
    return _raw_text(value)


def _raw_text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    text = str(value)
    with contextlib.suppress(UnicodeEncodeError):
        return text.encode("latin-1")
    return text.encode("utf-8")


def element_at(ds: Dataset, ancestors: Ancestors, tag: int) -> DataElement | None:
    """The element at a tag path, or None where any step is missing."""
    current = ds
    for seq_tag, index in ancestors:
        elem = current.get(BaseTag(seq_tag))
        if elem is None or elem.VR != "SQ" or len(elem.value) <= index:
            return None
        current = elem.value[index]
    return current.get(BaseTag(tag))


# --- running the offline command -------------------------------------------------------------

@dataclass
class AnonymizeRun:
    options: tuple[str, ...]
    status: int
    summary: dict[str, Any]
    quarantined: list[dict[str, Any]]
    outputs: dict[str, Path]  # corpus instance name -> output file
    unattributed: list[Path]  # output files no corpus instance accounts for

    def quarantine_reasons(self) -> dict[str, str]:
        """Instance file name -> "reason: message" of each quarantined instance."""
        return {Path(r["source"]).name: f"{r['reason']}: {r['message']}" for r in self.quarantined}


def write_config(root: Path, secret_hex: str, options: Iterable[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "secret.key"
    secret.write_text(secret_hex + "\n")
    config = root / "gateway.toml"
    listed = ", ".join(json.dumps(o) for o in options)
    config.write_text(
        f'[gateway]\ndata_dir = "{root / "var"}"\nsecret_file = "{secret}"\n'
        f"[deidentify]\noptions = [{listed}]\n"
    )
    return config


def _cli(cwd: Path, *argv: str | Path) -> tuple[int, str]:
    """Run a command in-process, in ``cwd``, with no secret or config from the environment."""
    out = io.StringIO()
    saved = {k: os.environ.pop(k) for k in (SECRET_ENV, CONFIG_ENV) if k in os.environ}
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out):
            status = gateway_main([str(a) for a in argv])
    finally:
        os.environ.update(saved)
    return status, out.getvalue()


def run_anonymize(src: Path, workdir: Path, options: Iterable[str], secret_hex: str,
                  instances: list[CorpusInstance],
                  expected_uid: Callable[[str], str] | None = None) -> AnonymizeRun:
    """``dicom-gateway anonymize src workdir/out`` under ``options``, with what it wrote.

    ``expected_uid`` maps a planted SOP Instance UID to the one the output is named by (the
    keyed replacement); outputs are attributed to their instance by it, or by the planted UID
    itself (Retain UIDs).
    """
    options = tuple(options)
    config = write_config(workdir / "site", secret_hex, options)
    dst = workdir / "out"
    status, out = _cli(workdir, "anonymize", "--config", config, src, dst, "--json")
    summary = json.loads(out) if out.strip() else {}
    _, listing = _cli(workdir, "quarantine", "list", "--config", config, "--json")
    quarantined = json.loads(listing) if listing.strip() else []
    names: dict[str, str] = {}
    for instance in instances:
        names[instance.sop_instance_uid] = instance.name
        if expected_uid is not None:
            names[expected_uid(instance.sop_instance_uid)] = instance.name
    outputs: dict[str, Path] = {}
    unattributed = []
    for path in sorted(dst.rglob("*.dcm")) if dst.exists() else []:
        name = names.get(path.name[: -len(".dcm")])
        if name is None:
            unattributed.append(path)
        else:
            outputs[name] = path
    return AnonymizeRun(options, status, summary, quarantined, outputs, unattributed)
