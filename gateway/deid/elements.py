"""Encoded data sets as trees of byte spans: read without decoding, written back piece by piece.

The engine never turns a whole instance into pydicom objects. Reading records, for each element,
where its header and value lie in the input; an element the profile keeps is copied as that span
(Pixel Data included, without a copy until the output is joined), and only the values an action
changes are decoded and encoded again. Sequences and items are written with undefined length, so
nothing has to be measured when a nested value changes size.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Mapping, Sequence
from functools import cache

from gateway.deid.once import built_once
from gateway.deid.profile import table as annex_e_table
from gateway.errors import MalformedInstance, NotDicom

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
CHARSET_TAG = 0x00080005
PIXEL_DATA = 0x7FE00010
VR_32 = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
VALID_VRS = VR_32 | frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL",
    "SS", "ST", "SV", "TM", "UI", "UL", "US", "UV",
})
_VR_NAMES = {vr.encode(): vr for vr in VALID_VRS}
# Text whose bytes depend on the Specific Character Set (the others are plain ASCII).
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
PN_DELIMITERS = {0x5C, 0x3D, 0x5E}  # \ = ^
DEFAULT_ENCODINGS = ("iso8859",)  # pydicom's name for the default repertoire (read as Latin-1)
_SIMPLE_CODECS = {"iso8859": "latin-1", "latin_1": "latin-1", "utf_8": "utf-8"}

# Sequences nested deeper than this are refused: real data stays under ~10 levels, and every walk
# over the tree (here and in the engine) recurses once per level, far from Python's limit.
MAX_DEPTH = 32
META_GROUP = 0x0002
# VR families for telling a harmless explicit VR variant from one that changes the meaning.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                      "UC", "UR", "UT"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
# Values of these VRs are whole numbers of fixed-size parts; integers of one size may stand in
# for each other (US/SS, UL/SL, UV/SV), floats and tags may not.
FIXED_SIZES = {"AT": 4, "FD": 8, "FL": 4, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "SL": 4,
               "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
_INTEGER_VRS = frozenset({"SL", "SS", "SV", "UL", "US", "UV"})
_UID_CHARACTERS = b"0123456789.\\"
# Specific Character Set defined terms (PS3.3 C.12.1.1.2, Tables C.12-2 to C.12-5), and ISO_IR 6,
# which is no defined term but is common in real data and names the default repertoire.
CHARSET_TERMS = frozenset({
    "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
    "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 13", "ISO_IR 192", "ISO_IR 203",
    "GB18030", "GBK", "ISO 2022 IR 6", "ISO 2022 IR 100", "ISO 2022 IR 101", "ISO 2022 IR 109",
    "ISO 2022 IR 110", "ISO 2022 IR 126", "ISO 2022 IR 127", "ISO 2022 IR 138", "ISO 2022 IR 144",
    "ISO 2022 IR 148", "ISO 2022 IR 166", "ISO 2022 IR 13", "ISO 2022 IR 203", "ISO 2022 IR 87",
    "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58",
})
_LATIN_9 = {"ISO_IR 203": "iso8859_15", "ISO 2022 IR 203": "iso8859_15"}  # unknown to pydicom 3.0
# The file meta group's VRs (PS3.10 7.1): what the spool and the forwarder read of every file,
# without pydicom's data dictionary (pydicom is imported where it is first needed, so that the
# forwarding process, which reads only file meta, never loads it).
FILE_META_VRS = {
    0x00020000: "UL", 0x00020001: "OB", 0x00020002: "UI", 0x00020003: "UI", 0x00020010: "UI",
    0x00020012: "UI", 0x00020013: "SH", 0x00020016: "AE", 0x00020017: "AE", 0x00020018: "AE",
    0x00020026: "UR", 0x00020027: "UR", 0x00020028: "UR", 0x00020031: "OB", 0x00020032: "UI",
    0x00020033: "UI", 0x00020035: "OB", 0x00020036: "OB", 0x00020037: "UL", 0x00020038: "FD",
    0x00020100: "UI", 0x00020102: "OB",
}


class Encoding:
    """Byte order and VR explicitness of one level of a data set, with its struct formats."""

    __slots__ = ("implicit", "little", "tag", "us", "ul", "order", "header", "plans")

    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit, self.little = implicit, little
        self.order = "<" if little else ">"
        # An element header: (group, element, length) in implicit VR; (group, element, VR,
        # 16-bit length) in explicit VR, the VR's two characters read as one number.
        self.header = struct.Struct(self.order + ("HHL" if implicit else "HHHH"))
        self.tag = struct.Struct(self.order + "HH")
        self.us = struct.Struct(self.order + "H")
        self.ul = struct.Struct(self.order + "L")
        # What an explicit VR header means, by (tag << 16 | VR code): worked out once per
        # attribute and VR, since every instance of a series repeats the same headers.
        self.plans: dict[int, Plan] = {}


EXPLICIT_LITTLE = Encoding(implicit=False, little=True)
IMPLICIT_LITTLE = Encoding(implicit=True, little=True)
EXPLICIT_BIG = Encoding(implicit=False, little=False)


class Element:
    """One element: where it lies in the input and, for a sequence, its items.

    ``vr`` is how the element is to be treated: the data dictionary's where the encoding has
    none (implicit VR, UN) or names a harmless variant (``reconciled_vr``); the header in the
    input may say otherwise."""

    __slots__ = ("tag", "vr", "start", "value_start", "end", "items", "inner")

    def __init__(self, tag: int, vr: str, start: int, value_start: int, end: int,
                 items: list[Item] | None = None, inner: Encoding | None = None) -> None:
        self.tag = tag
        self.vr = vr
        self.start = start
        self.value_start = value_start
        self.end = end  # of the value (a sequence's: after its delimiter, if any)
        self.items = items
        self.inner = inner  # how a sequence's items are encoded (UN sequences: implicit)

    @property
    def empty(self) -> bool:
        return self.end == self.value_start if self.items is None else not self.items


class Item:
    """A sequence item: a nested data set, with the character set it is read in."""

    __slots__ = ("elements", "encodings")

    def __init__(self, elements: list[Element], encodings: tuple[str, ...]) -> None:
        self.elements = elements
        self.encodings = encodings


@cache
def dictionary_vr(tag: int) -> str:
    """The data dictionary's VR; private and unknown tags are UN; 'US or SS' reads as US."""
    return dictionary_vrs(tag)[0]


@cache
def dictionary_vrs(tag: int) -> tuple[str, ...]:
    """Every VR the data dictionary allows (e.g. US, SS); ("UN",) for private and unknown tags."""
    if (tag >> 16) & 1:
        return ("UN",)
    if tag in FILE_META_VRS:  # the forwarding process reads file meta without loading pydicom
        return (FILE_META_VRS[tag],)
    from pydicom.datadict import dictionary_VR

    try:
        return tuple(str(dictionary_VR(tag)).split(" or "))
    except KeyError:
        # Newer than pydicom's dictionary: Table E.1-1 may still know it (an implicit VR
        # sequence read as bytes would keep the UIDs inside it).
        return (_table_vrs().get(tag, "UN"),)


@built_once
def _table_vrs() -> dict[int, str]:
    """The VRs that PS3.15 Table E.1-1 gives for its attributes (a newer edition than pydicom's
    dictionary may be)."""
    vrs = {}
    for row in annex_e_table()["attributes"]:
        pattern, vr = row["pattern"], row.get("vr")
        if vr and len(pattern) == 8 and all(c in "0123456789abcdefABCDEF" for c in pattern):
            vrs[int(pattern, 16)] = str(vr).split(" or ")[0]
    return vrs


@cache
def reconciled_vr(tag: int, vr: str) -> str | None:
    """The VR to treat an explicit VR element as, None when its VR changes what the value means
    (a sequence as bytes, a UID as a float, text as numbers): MalformedInstance.

    The harmless variants of real data pass (text VRs for each other, OB/OW, integers of one
    size) and are treated as the dictionary says, so that a sender's VR never decides how an
    attribute is cleaned (a name sent as TM, CS or a date is still scanned as a name). Private,
    unknown and retired tags keep any VR as it is."""
    allowed = dictionary_vrs(tag)
    if vr in allowed or allowed == ("UN",) or allowed == ("NONE",):
        return vr
    if tag == CHARSET_TAG:
        return None  # as a date or a name, the engine would rewrite it, and the text with it
    family = _vr_family(vr)
    for candidate in allowed:
        if _vr_family(candidate) == family:
            return candidate
    return vr if _is_retired(tag) else None


def _vr_family(vr: str) -> str:
    if vr in TEXT_VRS:
        return "text"
    if vr in BINARY_VRS:
        return "binary"
    if vr in _INTEGER_VRS:
        return f"integer{FIXED_SIZES[vr]}"
    return vr  # SQ, UI, FL, FD, AT: only themselves


def _is_retired(tag: int) -> bool:
    from pydicom.datadict import dictionary_is_retired

    try:
        return bool(dictionary_is_retired(tag))
    except KeyError:
        return False


def _check_value(buffer: bytes | memoryview, tag: int, vr: str, value_start: int, end: int) -> None:
    """Values whose size or characters cannot be of their VR (e.g. a 3-byte float); a private
    "UID" is the vendor's business (removed, or kept as it is by the safe private list)."""
    size = FIXED_SIZES.get(vr)
    if size is not None and (end - value_start) % size:
        raise MalformedInstance(f"{_tag_name(tag)}: the value length is not a multiple of its "
                                f"VR {vr}'s size")
    if vr == "UI" and not (tag >> 16) & 1 and \
            bytes(buffer[value_start:end]).strip(b" \x00").translate(None, _UID_CHARACTERS):
        raise MalformedInstance(f"{_tag_name(tag)}: a UID with characters other than digits and dots")


# (VR to treat the element as, VR as labelled, length field, value check): the check is the
# value's part size (FIXED_SIZES), -1 for a UID's characters, 0 for none. A UN element of a known
# attribute is labelled as the dictionary's VR (the one its value is checked and read as).
Plan = tuple[str, str, int, int]
LENGTH_16, LENGTH_32, LENGTH_UN = 0, 1, 2  # explicit VR: a 16-bit length, 32-bit, 32-bit UN
_CHECKS = {**FIXED_SIZES, "UI": -1}
MAX_PLANS = 65536  # distinct (attribute, VR) headers remembered; made-up private tags are endless


def _plan(plans: dict[int, Plan], tag: int, vr_code: int, encoding: Encoding) -> Plan:
    """What an explicit VR header means; MalformedInstance for a VR that is none, or one that
    changes what the attribute's value means (see ``reconciled_vr``). Only valid plans are kept."""
    vr = _VR_NAMES.get(vr_code.to_bytes(2, "little" if encoding.little else "big"), "")
    if not vr:
        raise MalformedInstance("an element has an invalid VR (wrong transfer syntax?)")
    if vr == "UN":
        # A UN element of a known attribute is read as what it is (a sequence: implicit VR).
        treated = dictionary_vr(tag)
        plan: Plan = (treated, treated, LENGTH_UN, _CHECKS.get(treated, 0))
    else:
        reconciled = reconciled_vr(tag, vr)
        if reconciled is None:
            raise MalformedInstance(f"{_tag_name(tag)}: the VR {vr} contradicts the data dictionary")
        plan = (reconciled, vr, LENGTH_32 if vr in VR_32 else LENGTH_16, _CHECKS.get(vr, 0))
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[(tag << 16) | vr_code] = plan
    return plan


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class Reader:
    """Reads one encoded data set (no file meta) into lists of Elements.

    With ``data_set`` (the default), group 0002 elements are file meta information out of place:
    they are left out of the elements (``dropped_meta`` tells that some were)."""

    def __init__(self, buffer: bytes | memoryview, encoding: Encoding, data_set: bool = True) -> None:
        self.buffer = buffer
        self.encoding = encoding
        self.data_set = data_set
        self.dropped_meta = False

    def read(self, start: int, end: int) -> list[Element]:
        elements, _ = self._elements(start, end, self.encoding, DEFAULT_ENCODINGS, in_item=False,
                                     depth=0)
        return elements

    def _elements(self, position: int, end: int, encoding: Encoding, encodings: tuple[str, ...],
                  in_item: bool, depth: int) -> tuple[list[Element], int]:
        """Elements from ``position`` up to ``end`` (or an item delimiter when ``in_item``)."""
        buffer = self.buffer
        implicit, unpack_header, unpack_ul = (encoding.implicit, encoding.header.unpack_from,
                                              encoding.ul.unpack_from)
        elements: list[Element] = []
        append, new_element, plans = elements.append, Element, encoding.plans
        data_set, previous = self.data_set, -1
        while position < end:
            start = position
            if position + 8 > end:
                raise MalformedInstance("trailing bytes after the last element (truncated or corrupt)")
            if implicit:  # group, element, 32-bit length
                group, number, length = unpack_header(buffer, position)
                vr_code = 0
            else:  # group, element, VR, 16-bit length
                group, number, vr_code, length = unpack_header(buffer, position)
            tag = (group << 16) | number
            if group == 0xFFFE:
                if in_item and tag == ITEM_END:
                    return elements, position + 8
                raise MalformedInstance("an item or delimiter where an element was expected")
            if group != META_GROUP or not data_set:  # file meta in a data set is dropped anyway
                if tag <= previous:
                    # Twice one tag would let one value escape what is read from the other.
                    raise MalformedInstance(f"{_tag_name(tag)}: elements out of order or repeated")
                previous = tag
            value_start = position + 8
            if implicit:
                vr = labelled = dictionary_vr(tag)
                check = _CHECKS.get(vr, 0)
            else:
                plan = plans.get((tag << 16) | vr_code) or _plan(plans, tag, vr_code, encoding)
                vr, labelled, length_field, check = plan
                if length_field:
                    (length,) = unpack_ul(buffer, position + 8)
                    value_start = position + 12
                    if length_field == LENGTH_UN and (length == UNDEFINED or vr == "SQ"):
                        # A sequence sent as UN: its items are implicit VR (PS3.5 6.2.2).
                        element, position = self._sequence(tag, start, value_start, length,
                                                           IMPLICIT_LITTLE, encodings, depth)
                        if group != META_GROUP or not data_set:
                            append(element)
                        else:
                            self.dropped_meta = True
                        continue
            if length != UNDEFINED and vr != "SQ":  # the usual case: a value of known length
                position = value_start + length
                if position > end:
                    raise MalformedInstance("truncated: an element is shorter than its length")
                if check and (check < 0 or length % check):  # as a reader of the copy sees it
                    _check_value(buffer, tag, labelled, value_start, position)
                element = new_element(tag, vr, start, value_start, position)
                if tag == CHARSET_TAG:
                    encodings = charset_encodings(self.buffer, element)
            elif vr == "SQ" or (implicit and tag != PIXEL_DATA):
                element, position = self._sequence(tag, start, value_start, length, encoding,
                                                   encodings, depth)
            elif tag == PIXEL_DATA or (group & 1):
                # encapsulated (compressed) pixel data: kept as it is (private data so too)
                position = self._fragments_end(value_start, end)
                element = new_element(tag, vr, start, value_start, position)
            else:
                raise MalformedInstance(f"{_tag_name(tag)}: an undefined length for VR {labelled}")
            if group != META_GROUP or not data_set:
                append(element)
            else:
                self.dropped_meta = True  # file meta inside the data set: never passed on
        if in_item:
            raise MalformedInstance("truncated: a sequence or item has no end delimiter")
        return elements, position

    def _sequence(self, tag: int, start: int, value_start: int, length: int, encoding: Encoding,
                  encodings: tuple[str, ...], depth: int) -> tuple[Element, int]:
        if depth >= MAX_DEPTH:
            raise MalformedInstance(f"sequences nested deeper than {MAX_DEPTH} levels")
        buffer = self.buffer
        defined = length != UNDEFINED
        limit = value_start + length if defined else len(buffer)
        if limit > len(buffer):
            raise MalformedInstance("truncated: an element is shorter than its length")
        items: list[Item] = []
        position = value_start
        while True:
            if position >= limit and defined:
                break
            if position + 8 > limit:
                raise MalformedInstance("truncated: a sequence or item has no end delimiter")
            group, number = encoding.tag.unpack_from(buffer, position)
            item_tag = (group << 16) | number
            (item_length,) = encoding.ul.unpack_from(buffer, position + 4)
            position += 8
            if item_tag == SEQUENCE_END and not defined:
                break
            if item_tag != ITEM:
                raise MalformedInstance("a sequence holds something other than items")
            if item_length == UNDEFINED:
                nested, position = self._elements(position, limit, encoding, encodings, in_item=True,
                                                  depth=depth + 1)
            else:
                item_end = position + item_length
                if item_end > limit:
                    raise MalformedInstance("truncated: an element is shorter than its length")
                nested, position = self._elements(position, item_end, encoding, encodings,
                                                  in_item=False, depth=depth + 1)
            items.append(Item(nested, _item_encodings(self.buffer, nested, encodings)))
        return Element(tag, "SQ", start, value_start, position, items, encoding), position

    def _fragments_end(self, position: int, end: int) -> int:
        """Where encapsulated data (items of bytes) ends, after its sequence delimiter."""
        unpack_tag, unpack_ul = self.encoding.tag.unpack_from, self.encoding.ul.unpack_from
        while position + 8 <= end:
            group, number = unpack_tag(self.buffer, position)
            (length,) = unpack_ul(self.buffer, position + 4)
            position += 8
            tag = (group << 16) | number
            if tag == SEQUENCE_END:
                return position
            if tag != ITEM or length == UNDEFINED:
                break
            position += length
        raise MalformedInstance("truncated: a sequence or item has no end delimiter")


def _item_encodings(buffer: bytes | memoryview, elements: list[Element],
                    inherited: tuple[str, ...]) -> tuple[str, ...]:
    for element in elements:
        if element.tag == CHARSET_TAG:
            return charset_encodings(buffer, element)
        if element.tag > CHARSET_TAG:
            break
    return inherited


def charset_encodings(buffer: bytes | memoryview, element: Element) -> tuple[str, ...]:
    """Python's codecs for a Specific Character Set element; MalformedInstance for a term that
    is not defined (pydicom would guess, and the text would be copied without being read)."""
    terms = [t.strip(" ") for t in value_text(buffer, element, DEFAULT_ENCODINGS).split("\\")]
    return _python_encodings(tuple(terms))


@cache
def _python_encodings(terms: tuple[str, ...]) -> tuple[str, ...]:
    first, others = (terms[0], terms[1:]) if terms else ("", ())
    if (first and first not in CHARSET_TERMS) or any(term not in CHARSET_TERMS for term in others):
        raise MalformedInstance("SpecificCharacterSet holds a term that is not a defined term")
    from pydicom.charset import convert_encodings, python_encoding

    if any(term in _LATIN_9 for term in terms):
        return tuple(dict.fromkeys(_LATIN_9.get(t) or python_encoding[t or "ISO_IR 6"] for t in terms))
    return tuple(convert_encodings(list(terms) or [""]))


# --- values ------------------------------------------------------------------------------------


def value_bytes(buffer: bytes | memoryview, element: Element) -> bytes:
    return bytes(buffer[element.value_start : element.end])


def value_text(buffer: bytes | memoryview, element: Element, encodings: Sequence[str]) -> str:
    """The value as text (character set applied for text VRs), without trailing padding."""
    raw = bytes(buffer[element.value_start : element.end])
    return decode_text(raw, element.vr, encodings).rstrip(" \x00")


def decode_text(raw: bytes, vr: str, encodings: Sequence[str]) -> str:
    if vr not in CHARSET_VRS:
        return raw.decode("latin-1")
    codec = _SIMPLE_CODECS.get(encodings[0]) if len(encodings) == 1 else None
    if codec is not None:
        return raw.decode(codec, "replace")
    from pydicom.charset import decode_bytes

    return decode_bytes(raw, list(encodings), PN_DELIMITERS if vr == "PN" else set())


def encode_text(text: str, vr: str, encodings: Sequence[str]) -> bytes:
    """Text in the data set's character set, padded to even length as PS3.5 requires."""
    if vr in CHARSET_VRS:
        codec = _SIMPLE_CODECS.get(encodings[0]) if len(encodings) == 1 else None
        raw = text.encode(codec, "replace") if codec else _encode_string(text, encodings)
    else:
        raw = text.encode("latin-1", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def _encode_string(text: str, encodings: Sequence[str]) -> bytes:
    from pydicom.charset import encode_string

    return encode_string(text, list(encodings))


_NUMBERS = {"FL": "f", "FD": "d", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H",
            "UV": "Q"}


def encode_value(value: object, vr: str, encoding: Encoding, encodings: Sequence[str]) -> bytes:
    """A generated value (text, number, bytes) as the bytes of an element of ``vr``."""
    if isinstance(value, bytes):
        return value + b"\x00" if len(value) % 2 else value
    if vr in _NUMBERS:
        return struct.pack(encoding.order + _NUMBERS[vr], value)
    if vr == "AT":
        tag = int(value)  # type: ignore[call-overload]
        return encoding.tag.pack(tag >> 16, tag & 0xFFFF)
    if isinstance(value, list | tuple):
        value = "\\".join(str(v) for v in value)
    return encode_text(str(value), vr, encodings)


def header(tag: int, vr: str, length: int, encoding: Encoding) -> bytes:
    """An element's header; a sequence or item of undefined length takes UNDEFINED."""
    tag_bytes = encoding.tag.pack(tag >> 16, tag & 0xFFFF)
    if encoding.implicit:
        return tag_bytes + encoding.ul.pack(length)
    if vr in VR_32:
        return tag_bytes + vr.encode() + b"\x00\x00" + encoding.ul.pack(length)
    if length > 0xFFFF:
        raise MalformedInstance("a value is too long for its VR")
    return tag_bytes + vr.encode() + encoding.us.pack(length)


def element_bytes(tag: int, vr: str, value: bytes, encoding: Encoding) -> bytes:
    return header(tag, vr, len(value), encoding) + value


def sequence_bytes(tag: int, items: list[list[bytes | memoryview]], encoding: Encoding,
                   header_vr: str = "SQ", outer: Encoding | None = None) -> bytes:
    """A sequence of undefined length whose items (each a list of encoded elements, in
    ``encoding``) have undefined length too; its header is in ``outer``, the encoding of the data
    set it lies in (by default the items' own; for a UN sequence, whose items are implicit VR,
    explicit VR little endian)."""
    item_start = encoding.tag.pack(0xFFFE, 0xE000) + encoding.ul.pack(UNDEFINED)
    item_end = encoding.tag.pack(0xFFFE, 0xE00D) + encoding.ul.pack(0)
    if outer is None:
        outer = EXPLICIT_LITTLE if header_vr == "UN" and encoding.implicit else encoding
    parts: list[bytes | memoryview] = [header(tag, header_vr, UNDEFINED, outer)]
    for item in items:
        parts.append(item_start)
        parts.extend(item)
        parts.append(item_end)
    parts.append(encoding.tag.pack(0xFFFE, 0xE0DD) + encoding.ul.pack(0))
    return b"".join(parts)


# --- pixel data --------------------------------------------------------------------------------

SAMPLES_PER_PIXEL = 0x00280002
PHOTOMETRIC_INTERPRETATION = 0x00280004
NUMBER_OF_FRAMES = 0x00280008
ROWS = 0x00280010
COLUMNS = 0x00280011
BITS_ALLOCATED = 0x00280100
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
# Pixel data tag -> bits per sample (None: BitsAllocated says).
PIXEL_DATA_BITS: dict[int, int | None] = {PIXEL_DATA: None, FLOAT_PIXEL_DATA: 32,
                                          DOUBLE_FLOAT_PIXEL_DATA: 64}
# Native YBR 4:2:2 stores two luminance samples per chroma pair: 2 samples a pixel, not 3.
_HALF_CHROMA = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422"})


def check_pixel_data(buffer: bytes | memoryview, top: Mapping[int, Element], encoding: Encoding) -> None:
    """MalformedInstance when a top-level pixel data element cannot hold the image its attributes
    describe: native data shorter than Rows x Columns x frames x samples x bits, missing image
    attributes, or encapsulated data without a fragment of data.

    Native data longer than that is accepted: vendors pad (a byte to even length, or more), and
    the extra bytes are copied as they came, as the pixels are."""
    for tag, bits in PIXEL_DATA_BITS.items():
        element = top.get(tag)
        if element is None:
            continue
        if element.items is not None:
            raise MalformedInstance(f"{_tag_name(tag)}: pixel data read as a sequence")
        if _is_encapsulated(buffer, element, encoding):
            if not _has_fragment_data(buffer, element, encoding):
                raise MalformedInstance("encapsulated pixel data without a fragment of data")
        elif element.end - element.value_start < _expected_pixel_bytes(buffer, top, encoding, bits):
            raise MalformedInstance("pixel data shorter than the image attributes say")


def _is_encapsulated(buffer: bytes | memoryview, element: Element, encoding: Encoding) -> bool:
    # Pixel data VRs (OB, OW, OF, OD, UN) all have a 32-bit length just before the value.
    if element.value_start - element.start < 8:
        return False
    (length,) = encoding.ul.unpack_from(buffer, element.value_start - 4)
    return bool(length == UNDEFINED)


def _has_fragment_data(buffer: bytes | memoryview, element: Element, encoding: Encoding) -> bool:
    """A fragment after the basic offset table (the first item) with at least one byte."""
    position, first = element.value_start, True
    while position + 8 <= element.end:
        group, number = encoding.tag.unpack_from(buffer, position)
        (length,) = encoding.ul.unpack_from(buffer, position + 4)
        if (group << 16) | number != ITEM:
            return False
        if length and not first:
            return True
        position, first = position + 8 + length, False
    return False


def _expected_pixel_bytes(buffer: bytes | memoryview, top: Mapping[int, Element], encoding: Encoding,
                          bits: int | None) -> int:
    rows, columns = _us_value(buffer, top, ROWS, encoding), _us_value(buffer, top, COLUMNS, encoding)
    samples = _us_value(buffer, top, SAMPLES_PER_PIXEL, encoding)
    if bits is None:
        bits = _us_value(buffer, top, BITS_ALLOCATED, encoding)
    if rows is None or columns is None or samples is None or bits is None:
        raise MalformedInstance("pixel data without Rows, Columns, SamplesPerPixel or BitsAllocated")
    frames = 1
    if NUMBER_OF_FRAMES in top:
        text = value_text(buffer, top[NUMBER_OF_FRAMES], DEFAULT_ENCODINGS).strip()
        if text:
            try:
                frames = int(text)
            except ValueError:
                raise MalformedInstance("NumberOfFrames is not a number") from None
    photometric = (value_text(buffer, top[PHOTOMETRIC_INTERPRETATION], DEFAULT_ENCODINGS).strip()
                   if PHOTOMETRIC_INTERPRETATION in top else "")
    if samples == 3 and photometric in _HALF_CHROMA:
        samples = 2
    return (rows * columns * max(frames, 0) * samples * bits + 7) // 8


def _us_value(buffer: bytes | memoryview, top: Mapping[int, Element], tag: int,
              encoding: Encoding) -> int | None:
    """The first value of a US attribute, None when absent or empty."""
    element = top.get(tag)
    if element is None or element.end - element.value_start < 2 or element.items is not None:
        return None
    (value,) = encoding.us.unpack_from(buffer, element.value_start)
    return int(value)


# --- Part 10 files -----------------------------------------------------------------------------

PREAMBLE = 128
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
TRANSFER_SYNTAX_TAG = 0x00020010
MEDIA_SOP_CLASS_TAG = 0x00020002
_BARE_DATASET_GROUPS = (b"\x02\x00", b"\x08\x00")  # a data set without preamble starts so


class EncodedInstance:
    """A file or bare data set split into its transfer syntax and its data set's elements."""

    __slots__ = ("buffer", "transfer_syntax", "encoding", "elements", "body_start",
                 "media_sop_class")

    def __init__(self, buffer: memoryview, transfer_syntax: str, encoding: Encoding,
                 elements: list[Element], body_start: int, media_sop_class: str) -> None:
        self.buffer = buffer  # the (inflated) bytes the elements point into
        self.transfer_syntax = transfer_syntax
        self.encoding = encoding
        self.elements = elements
        self.body_start = body_start  # where the data set starts in ``buffer``
        self.media_sop_class = media_sop_class  # as the file meta names it

    def text(self, tag: int) -> str:
        """A top-level element's value as text ("" when absent)."""
        for element in self.elements:
            if element.tag == tag:
                return value_text(self.buffer, element, DEFAULT_ENCODINGS).strip()
        return ""


def read_encoded(data: bytes) -> EncodedInstance:
    """Split a Part 10 file or a bare data set; raise NotDicom or MalformedInstance."""
    if not data:
        raise NotDicom("empty file")
    view = memoryview(data)
    if data[PREAMBLE : PREAMBLE + 4] == b"DICM":
        position = PREAMBLE + 4
    elif data[:2] in _BARE_DATASET_GROUPS:
        position = 0
    else:
        raise NotDicom("no DICOM preamble and no data set")
    meta, position = read_meta(view, position)
    syntax = _meta_value(view, meta, TRANSFER_SYNTAX_TAG) or _guess_syntax(view, position)
    return read_dataset(view, syntax, position, _meta_value(view, meta, MEDIA_SOP_CLASS_TAG))


def read_dataset(data: bytes | bytearray | memoryview, transfer_syntax: str, start: int = 0,
                 media_sop_class: str = "") -> EncodedInstance:
    """Split a data set (from ``start``) encoded in ``transfer_syntax``, e.g. one received by
    C-STORE; raise NotDicom or MalformedInstance."""
    view = memoryview(data)
    if start >= len(view):
        raise NotDicom("empty data set")
    try:
        if transfer_syntax == DEFLATED:
            view = memoryview(_inflate(bytes(view[start:])))
            start = 0
        encoding = _encoding_of(transfer_syntax)
        reader = Reader(view, encoding)
        elements = reader.read(start, len(view))
        if reader.dropped_meta:
            # Whoever copies the data set as it came (a trusted instance) must not find them
            # either: the data set is written anew without them, and read again.
            view = memoryview(b"".join(_serialized(view, elements, encoding)))
            start = 0
            elements = Reader(view, encoding).read(0, len(view))
    except struct.error as exc:
        raise MalformedInstance("truncated: an element header is incomplete") from exc
    return EncodedInstance(view, transfer_syntax, encoding, elements, start, media_sop_class)


def _serialized(buffer: memoryview, elements: list[Element], encoding: Encoding) -> list[bytes | memoryview]:
    """Elements as they came, their sequences written with undefined lengths (so that items
    left without some of their elements need no length of their own)."""
    parts: list[bytes | memoryview] = []
    for element in elements:
        if element.items is None:
            parts.append(buffer[element.start : element.end])
            continue
        inner = element.inner or encoding
        items = [_serialized(buffer, item.elements, inner) for item in element.items]
        header_vr = "UN" if inner.implicit and not encoding.implicit else "SQ"
        parts.append(sequence_bytes(element.tag, items, inner, header_vr, encoding))
    return parts


def read_meta(view: memoryview, position: int) -> tuple[list[Element], int]:
    """The group 0002 elements (always explicit VR little endian) and where the data set starts;
    MalformedInstance if the group is cut short."""
    try:
        return _read_meta(view, position)
    except struct.error as exc:
        raise MalformedInstance("truncated: an element header is incomplete") from exc


def _read_meta(view: memoryview, position: int) -> tuple[list[Element], int]:
    meta: list[Element] = []
    reader = Reader(view, EXPLICIT_LITTLE, data_set=False)
    if view[position : position + 6] == b"\x02\x00\x00\x00UL" and position + 12 <= len(view):
        # The group length says where the group ends: read it whole (it is checked below).
        end = position + 12 + EXPLICIT_LITTLE.ul.unpack_from(view, position + 8)[0]
        if end <= len(view) and view[end : end + 2] != b"\x02\x00":
            with contextlib.suppress(MalformedInstance):
                elements = reader.read(position, end)
                if all(e.tag >> 16 == 2 for e in elements):
                    return elements, end
    while position + 8 <= len(view) and view[position : position + 2] == b"\x02\x00":
        vr = bytes(view[position + 4 : position + 6]).decode("latin-1")
        if vr not in VALID_VRS:
            raise MalformedInstance("unreadable file meta information")
        short = vr not in VR_32
        length = EXPLICIT_LITTLE.us.unpack_from(view, position + 6)[0] if short else \
            EXPLICIT_LITTLE.ul.unpack_from(view, position + 8)[0]
        value_start = position + (8 if short else 12)
        if length == UNDEFINED or value_start + length > len(view):
            raise MalformedInstance("truncated: an element is shorter than its length")
        meta.extend(reader.read(position, value_start + length))
        position = value_start + length
    return meta, position


def _meta_value(view: memoryview, meta: list[Element], tag: int) -> str:
    for element in meta:
        if element.tag == tag:
            return value_text(view, element, DEFAULT_ENCODINGS).strip()
    return ""


def _guess_syntax(view: memoryview, position: int) -> str:
    """No transfer syntax named: explicit VR if the first element looks like it, else implicit."""
    vr = bytes(view[position + 4 : position + 6])
    if vr.isalpha() and vr.decode("latin-1") in VALID_VRS:
        return EXPLICIT_VR_LITTLE_ENDIAN
    return IMPLICIT_VR_LITTLE_ENDIAN


def _encoding_of(syntax: str) -> Encoding:
    if syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return IMPLICIT_LITTLE
    if syntax == EXPLICIT_VR_BIG_ENDIAN:
        return EXPLICIT_BIG
    return EXPLICIT_LITTLE


# A deflated data set holds no pixels of its own worth more than this; a few kilobytes of
# zeros could otherwise inflate to fill the memory (a "deflate bomb").
MAX_INFLATED = 1 << 30


def _inflate(data: bytes, limit: int = MAX_INFLATED) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise MalformedInstance("the deflated data set cannot be inflated") from exc
    if inflater.unconsumed_tail:
        raise MalformedInstance(f"the deflated data set inflates to more than {limit >> 20} MiB")
    return inflated


def deflate(data: bytes) -> bytes:
    """The raw deflate stream, padded to an even length with one NUL (PS3.5 A.5): archives
    abort on an odd-length data set."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    stream = compressor.compress(data) + compressor.flush()
    return stream + b"\x00" if len(stream) % 2 else stream


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
              implementation_class_uid: str, implementation_version: str) -> bytes:
    """The file meta group of a Part 10 file written by the gateway: what PS3.10 requires, and
    nothing of the sending systems."""
    e = EXPLICIT_LITTLE
    body = b"".join((
        element_bytes(0x00020001, "OB", b"\x00\x01", e),
        element_bytes(0x00020002, "UI", encode_text(sop_class_uid, "UI", ()), e),
        element_bytes(0x00020003, "UI", encode_text(sop_instance_uid, "UI", ()), e),
        element_bytes(0x00020010, "UI", encode_text(transfer_syntax, "UI", ()), e),
        element_bytes(0x00020012, "UI", encode_text(implementation_class_uid, "UI", ()), e),
        element_bytes(0x00020013, "SH", encode_text(implementation_version, "SH", DEFAULT_ENCODINGS), e),
    ))
    return element_bytes(0x00020000, "UL", e.ul.pack(len(body)), e) + body
