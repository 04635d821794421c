"""A profile's edits: remove, keep and set, applied to a de-identified data set (pure).

Edits come after de-identification, in the order remove, keep, set. They name top-level
attributes by keyword (``StudyDate``), by tag (``(0008,0020)``) or, for a private attribute, by
its group, its element byte and its creator (``(0019,xx10) GEMS_ACQU_01``), since a private
element's block number differs from one instance to the next.

``set`` values are literal text or templates over ``{label.COLUMN}``, ``{pseudonym.patient_id}``,
``{pseudonym.study}`` and ``{profile}``: never over original values, so a template cannot copy
an identifier by itself (a label can: the caller runs the leak guard on what edits wrote).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.deid.elements import (
    DEFAULT_ENCODINGS,
    Element,
    EncodedInstance,
    Encoding,
    charset_encodings,
    element_bytes,
    encode_value,
    value_text,
)

STUDY_NUMBER_DIGITS = 8
CHARSET_TAG = 0x00080005
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "AT", "FL", "FD", "SL", "SS", "SV",
                         "UL", "US", "UV"})
PSEUDONYM_FIELDS = frozenset({"pseudonym.patient_id", "pseudonym.study", "profile"})
_TAG = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_PRIVATE = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*[xX]{2}([0-9A-Fa-f]{2})\s*\)\s+(\S.*)")
_FIELD = re.compile(r"\{([^{}]*)\}")
_LABEL_COLUMN = re.compile(r"label\.(\w[\w -]*)")
_UNSETTABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW",
                             "US or SS", "US or OW", "US or SS or OW"})
# What edits must not touch: the file's identity and the pixel data (routing and delivery rely on
# them; the UIDs are keyed and the same across profiles).
_PROTECTED = frozenset(int(tag_for_keyword(k) or 0) for k in (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "SpecificCharacterSet", "TransferSyntaxUID", "PixelData", "FloatPixelData",
    "DoubleFloatPixelData"))


class EditError(ValueError):
    """An attribute or template that cannot be an edit (the settings name the key)."""


@dataclass(frozen=True)
class Target:
    """A top-level attribute: a standard tag, or a private one by group, element byte, creator."""

    tag: int  # for a private one: (group << 16) | element byte, block left out
    creator: str = ""

    @property
    def private(self) -> bool:
        return bool(self.creator)

    @property
    def name(self) -> str:
        """How logs and ``profile show`` name it: the keyword, else the tag."""
        group, element = self.tag >> 16, self.tag & 0xFFFF
        if self.private:
            return f"({group:04X},xx{element:02X}) {self.creator}"
        return keyword_for_tag(self.tag) or f"({group:04X},{element:04X})"

    @property
    def vr(self) -> str:
        if self.private:
            return "LO"  # a private element's VR is its creator's business: text is safe
        try:
            return str(dictionary_VR(self.tag))
        except KeyError:
            return "LO"


@dataclass(frozen=True)
class Edits:
    remove: tuple[Target, ...] = ()
    keep: tuple[Target, ...] = ()
    set: tuple[tuple[Target, str], ...] = ()  # (attribute, template)

    def __bool__(self) -> bool:
        return bool(self.remove or self.keep or self.set)

    def fields(self) -> frozenset[str]:
        """Every template field the set values use (``label.diagnosis``, ``profile``...)."""
        return frozenset(f for _, template in self.set for f in template_fields(template))

    def label_columns(self) -> frozenset[str]:
        return frozenset(f.removeprefix("label.") for f in self.fields() if f.startswith("label."))


def parse_target(text: str) -> Target:
    """A keyword, ``(gggg,eeee)`` or ``(gggg,xxee) CREATOR``; EditError when it names nothing."""
    text = text.strip()
    private = _PRIVATE.fullmatch(text)
    if private is not None:
        group = int(private.group(1), 16)
        if group % 2 == 0:
            raise EditError(f"{text!r}: group {group:04X} is not private (odd groups are)")
        if int(private.group(2), 16) < 0x10:
            raise EditError(f"{text!r}: element xx{private.group(2)} is a creator slot; "
                            "private elements are xx10 to xxFF")
        return Target((group << 16) | int(private.group(2), 16), private.group(3).strip())
    plain = _TAG.fullmatch(text)
    if plain is not None:
        tag = (int(plain.group(1), 16) << 16) | int(plain.group(2), 16)
        if (tag >> 16) % 2 == 1:
            raise EditError(f"{text!r}: a private tag needs its creator, e.g. "
                            f"'({tag >> 16:04X},xx{tag & 0xFF:02X}) CREATOR'")
        return _checked(Target(tag), text)
    keyword_tag = tag_for_keyword(text)
    if keyword_tag is None:
        raise EditError(f"{text!r} is not a DICOM keyword, '(gggg,eeee)' or "
                        "'(gggg,xxee) CREATOR'")
    return _checked(Target(int(keyword_tag)), text)


def _checked(target: Target, text: str) -> Target:
    if target.tag >> 16 in (0x0000, 0x0002):
        raise EditError(f"{text!r}: command and file meta elements are not the data set's")
    if target.tag in _PROTECTED:
        raise EditError(f"{text!r}: the instance's identity and pixels are not edited "
                        "(UIDs are keyed by the de-identification)")
    return target


def parse_set_value(target: Target, template: str) -> str:
    """Check a ``set`` value: a settable VR and known template fields (columns: by the caller)."""
    if target.vr in _UNSETTABLE_VRS:
        raise EditError(f"{target.name} has VR {target.vr}: only text and number values are set")
    for name in template_fields(template):
        if name not in PSEUDONYM_FIELDS and _LABEL_COLUMN.fullmatch(name) is None:
            raise EditError(f"{{{name}}} is not a template field; use {{label.COLUMN}}, "
                            "{pseudonym.patient_id}, {pseudonym.study} or {profile}")
    return template


def template_fields(template: str) -> list[str]:
    return [m.group(1).strip() for m in _FIELD.finditer(template)]


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with its fields filled (a field without a value becomes empty)."""
    return _FIELD.sub(lambda m: values.get(m.group(1).strip(), ""), template)


def study_number(secret: bytes, study_uid: str) -> str:
    """A short keyed number for a study: the same for each of its instances and every profile,
    meaningless without the secret."""
    digest = hmac.new(secret, b"study\x00" + study_uid.encode("ascii", "replace"), hashlib.sha256)
    return f"{int.from_bytes(digest.digest()[:8], 'big') % 10 ** STUDY_NUMBER_DIGITS:0{STUDY_NUMBER_DIGITS}d}"


def apply_edits(output: Dataset, original: Dataset, edits: Edits,
                values: Mapping[str, str]) -> list[tuple[str, str]]:
    """Remove, keep, then set, in ``output`` (changed in place); ``original`` is read for keep.

    Returns (attribute name, text) of every value the edits wrote, for the leak guard.
    """
    written: list[tuple[str, str]] = []
    for target in edits.remove:
        _delete(output, target)
    for target in edits.keep:
        element = _find(original, target)
        if element is None:
            _delete(output, target)  # kept as it was: absent
            continue
        _put(output, target, element.VR, element.value)
        written.append((target.name, _text(element.value)))
    for target, template in edits.set:
        text = render(template, values)
        _put(output, target, target.vr, _typed(text, target.vr))
        written.append((target.name, text))
    return written


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("latin-1", "replace")
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _typed(text: str, vr: str) -> object:
    """The value pydicom wants for ``vr`` (a number VR from text; a bad number: empty)."""
    if vr in ("US", "SS", "UL", "SL", "SV", "UV"):
        try:
            return int(text)
        except ValueError:
            return None
    if vr in ("FL", "FD"):
        try:
            return float(text)
        except ValueError:
            return None
    return text


def _private_tag(ds: Dataset, target: Target, create: bool) -> int | None:
    group, byte = target.tag >> 16, target.tag & 0xFF
    try:
        block = ds.private_block(group, target.creator, create=create)
    except KeyError:
        return None
    return int(block.get_tag(byte))


def _find(ds: Dataset, target: Target) -> DataElement | None:
    tag = _private_tag(ds, target, create=False) if target.private else target.tag
    if tag is None or tag not in ds:
        return None
    element = ds[tag]
    return element if isinstance(element, DataElement) else None


def _delete(ds: Dataset, target: Target) -> None:
    tag = _private_tag(ds, target, create=False) if target.private else target.tag
    if tag is not None and tag in ds:
        del ds[tag]


def _put(ds: Dataset, target: Target, vr: str, value: object) -> None:
    tag = _private_tag(ds, target, create=True) if target.private else target.tag
    assert tag is not None  # create=True makes the block
    ds.add_new(tag, vr, value)


# --- the same on encoded data sets (the gateway's own reader: no pydicom round trip) --------------


class Encoded:
    """A data set as ``read_encoded`` splits it, with its character set, for ``apply_encoded``."""

    def __init__(self, instance: EncodedInstance) -> None:
        self.instance = instance
        self.buffer = instance.buffer
        self.top = {e.tag: e for e in instance.elements}
        charset = self.top.get(CHARSET_TAG)
        self.encodings = (DEFAULT_ENCODINGS if charset is None
                          else charset_encodings(self.buffer, charset))

    def text(self, tag: int) -> str:
        element = self.top.get(tag)
        return "" if element is None else value_text(self.buffer, element, self.encodings).strip()

    def block(self, group: int, creator: str) -> int | None:
        """The block number of ``creator`` in ``group`` (None: not there)."""
        for slot in range(0x10, 0x100):
            element = self.top.get((group << 16) | slot)
            if element is not None and value_text(self.buffer, element, self.encodings).strip() \
                    == creator:
                return slot
        return None

    def free_block(self, group: int, taken: Mapping[int, object]) -> int:
        for slot in range(0x10, 0x100):
            if (group << 16) | slot not in taken:
                return slot
        raise EditError(f"no free private block in group {group:04X}")

    def tag_of(self, target: Target) -> int | None:
        if not target.private:
            return target.tag
        block = self.block(target.tag >> 16, target.creator)
        return None if block is None else _in_block(target, block)


def _in_block(target: Target, block: int) -> int:
    group = target.tag >> 16
    return (group << 16) | (block << 8) | (target.tag & 0xFF)


def same_encoding(a: EncodedInstance, b: EncodedInstance) -> bool:
    """Whether elements of ``a`` can be copied as bytes into ``b``."""
    return (a.encoding.implicit, a.encoding.little) == (b.encoding.implicit, b.encoding.little)


def apply_encoded(output: Encoded, original: Encoded, edits: Edits, values: Mapping[str, str]
                  ) -> tuple[list[bytes | memoryview], list[tuple[str, str]]]:
    """``apply_edits`` on encoded data sets of one encoding (``same_encoding``): the output's
    top-level elements, edited, in tag order, and (name, text) of every value written."""
    buffer, encoding = output.buffer, output.instance.encoding
    entries: dict[int, bytes | memoryview] = {
        e.tag: buffer[e.start : e.end] for e in output.instance.elements}
    written: list[tuple[str, str]] = []
    for target in edits.remove:
        tag = output.tag_of(target)
        if tag is not None:
            entries.pop(tag, None)
    for target in edits.keep:
        source_tag = original.tag_of(target)
        element = None if source_tag is None else original.top.get(source_tag)
        tag = _writable_tag(output, target, entries, encoding)
        if element is None:
            entries.pop(tag, None)
            continue
        raw = bytearray(original.buffer[element.start : element.end])
        raw[0:4] = encoding.tag.pack(tag >> 16, tag & 0xFFFF)  # its block may differ here
        entries[tag] = bytes(raw)
        written.extend((target.name, text) for text in _texts(original, element))
    for target, template in edits.set:
        text = render(template, values)
        typed = _typed(text, target.vr)
        value = b"" if typed is None else encode_value(typed, target.vr, encoding, output.encodings)
        tag = _writable_tag(output, target, entries, encoding)
        entries[tag] = element_bytes(tag, target.vr, value, encoding)
        written.append((target.name, text))
    return [entries[tag] for tag in sorted(entries)], written


def _writable_tag(output: Encoded, target: Target, entries: dict[int, bytes | memoryview],
                  encoding: Encoding) -> int:
    """The target's tag in the output; a private one's block is made when it is missing."""
    tag = output.tag_of(target)
    if tag is not None:
        return tag
    group = target.tag >> 16
    for slot in range(0x10, 0x100):  # a block an earlier edit made
        creator = entries.get((group << 16) | slot)
        if creator is not None and bytes(creator[8:]).rstrip(b" \x00").decode("latin-1") \
                == target.creator:
            return _in_block(target, slot)
    slot = output.free_block(group, entries)
    creator_tag = (group << 16) | slot
    entries[creator_tag] = element_bytes(
        creator_tag, "LO", encode_value(target.creator, "LO", encoding, DEFAULT_ENCODINGS), encoding)
    return _in_block(target, slot)


def _texts(source: Encoded, element: Element) -> list[str]:
    """Every text value of ``element`` (in a sequence: at every level), for the leak guard:
    dates too, since a kept birth date is an identifier."""
    if element.items is None:
        return [value_text(source.buffer, element, source.encodings)] \
            if element.vr not in _BINARY_VRS else []
    found = []
    for item in element.items:
        for inner in item.elements:
            found.extend(_texts(source, inner))
    return found
