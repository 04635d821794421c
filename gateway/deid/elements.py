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
from collections.abc import Sequence
from functools import cache

from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import dictionary_VR

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


class Encoding:
    """Byte order and VR explicitness of one level of a data set, with its struct formats."""

    __slots__ = ("implicit", "little", "tag", "us", "ul", "order", "header")

    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit, self.little = implicit, little
        self.order = "<" if little else ">"
        # An element header as (group, element, VR bytes, length); implicit VR has no VR bytes
        # (b"" in their place) and a 32-bit length.
        self.header = struct.Struct(self.order + ("HH0sL" if implicit else "HH2sH"))
        self.tag = struct.Struct(self.order + "HH")
        self.us = struct.Struct(self.order + "H")
        self.ul = struct.Struct(self.order + "L")


EXPLICIT_LITTLE = Encoding(implicit=False, little=True)
IMPLICIT_LITTLE = Encoding(implicit=True, little=True)
EXPLICIT_BIG = Encoding(implicit=False, little=False)


class Element:
    """One element: where it lies in the input and, for a sequence, its items."""

    __slots__ = ("tag", "vr", "start", "value_start", "end", "items", "inner")

    def __init__(self, tag: int, vr: str, start: int, value_start: int, end: int,
                 items: list[Item] | None = None, inner: Encoding | None = None) -> None:
        self.tag = tag
        self.vr = vr  # the effective VR (the dictionary's where the encoding has none)
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
    if (tag >> 16) & 1:
        return "UN"
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


class Reader:
    """Reads one encoded data set (no file meta) into lists of Elements."""

    def __init__(self, buffer: bytes | memoryview, encoding: Encoding) -> None:
        self.buffer = buffer
        self.encoding = encoding

    def read(self, start: int, end: int) -> list[Element]:
        elements, _ = self._elements(start, end, self.encoding, DEFAULT_ENCODINGS, in_item=False)
        return elements

    def _elements(self, position: int, end: int, encoding: Encoding, encodings: tuple[str, ...],
                  in_item: bool) -> tuple[list[Element], int]:
        """Elements from ``position`` up to ``end`` (or an item delimiter when ``in_item``)."""
        buffer = self.buffer
        implicit, unpack_header, unpack_ul = (encoding.implicit, encoding.header.unpack_from,
                                              encoding.ul.unpack_from)
        elements: list[Element] = []
        append, new_element, vr_names, vr_32 = elements.append, Element, _VR_NAMES, VR_32
        while position < end:
            start = position
            if position + 8 > end:
                raise MalformedInstance("trailing bytes after the last element (truncated or corrupt)")
            # implicit: group, element, 32-bit length; explicit: group, element, VR, 16-bit length
            group, number, vr_bytes, length = unpack_header(buffer, position)
            tag = (group << 16) | number
            if group == 0xFFFE:
                if in_item and tag == ITEM_END:
                    return elements, position + 8
                raise MalformedInstance("an item or delimiter where an element was expected")
            value_start = position + 8
            if implicit:
                vr = dictionary_vr(tag)
            else:
                vr = vr_names.get(vr_bytes, "")
                if not vr:
                    raise MalformedInstance("an element has an invalid VR (wrong transfer syntax?)")
                if vr in vr_32:
                    (length,) = unpack_ul(buffer, position + 8)
                    value_start = position + 12
                    if vr == "UN":
                        if length == UNDEFINED or dictionary_vr(tag) == "SQ":
                            # A sequence sent as UN: its items are implicit VR (PS3.5 6.2.2).
                            element, position = self._sequence(tag, start, value_start, length,
                                                               IMPLICIT_LITTLE, encodings)
                            append(element)
                            continue
                        vr = dictionary_vr(tag)  # a known attribute is read as what it is
            if length != UNDEFINED and vr != "SQ":  # the usual case: a value of known length
                position = value_start + length
                if position > end:
                    raise MalformedInstance("truncated: an element is shorter than its length")
                element = new_element(tag, vr, start, value_start, position)
                if tag == CHARSET_TAG:
                    encodings = charset_encodings(self.buffer, element)
            elif vr == "SQ" or (implicit and tag != PIXEL_DATA):
                element, position = self._sequence(tag, start, value_start, length, encoding,
                                                   encodings)
            else:  # encapsulated (compressed) pixel data: kept as it is
                position = self._fragments_end(value_start, end)
                element = new_element(tag, vr, start, value_start, position)
            append(element)
        if in_item:
            raise MalformedInstance("truncated: a sequence or item has no end delimiter")
        return elements, position

    def _sequence(self, tag: int, start: int, value_start: int, length: int, encoding: Encoding,
                  encodings: tuple[str, ...]) -> tuple[Element, int]:
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
                nested, position = self._elements(position, limit, encoding, encodings, in_item=True)
            else:
                item_end = position + item_length
                if item_end > limit:
                    raise MalformedInstance("truncated: an element is shorter than its length")
                nested, position = self._elements(position, item_end, encoding, encodings,
                                                  in_item=False)
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
    terms = [t.strip() for t in value_text(buffer, element, DEFAULT_ENCODINGS).split("\\")]
    return _python_encodings(tuple(terms))


@cache
def _python_encodings(terms: tuple[str, ...]) -> tuple[str, ...]:
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
    return decode_bytes(raw, list(encodings), PN_DELIMITERS if vr == "PN" else set())


def encode_text(text: str, vr: str, encodings: Sequence[str]) -> bytes:
    """Text in the data set's character set, padded to even length as PS3.5 requires."""
    if vr in CHARSET_VRS:
        codec = _SIMPLE_CODECS.get(encodings[0]) if len(encodings) == 1 else None
        raw = text.encode(codec, "replace") if codec else encode_string(text, list(encodings))
    else:
        raw = text.encode("latin-1", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


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
                   header_vr: str = "SQ") -> bytes:
    """A sequence of undefined length whose items (each a list of encoded elements) have
    undefined length too."""
    item_start = encoding.tag.pack(0xFFFE, 0xE000) + encoding.ul.pack(UNDEFINED)
    item_end = encoding.tag.pack(0xFFFE, 0xE00D) + encoding.ul.pack(0)
    parts: list[bytes | memoryview] = [header(tag, header_vr, UNDEFINED, encoding)]
    for item in items:
        parts.append(item_start)
        parts.extend(item)
        parts.append(item_end)
    parts.append(encoding.tag.pack(0xFFFE, 0xE0DD) + encoding.ul.pack(0))
    return b"".join(parts)


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
        elements = Reader(view, encoding).read(start, len(view))
    except struct.error as exc:
        raise MalformedInstance("truncated: an element header is incomplete") from exc
    return EncodedInstance(view, transfer_syntax, encoding, elements, start, media_sop_class)


def read_meta(view: memoryview, position: int) -> tuple[list[Element], int]:
    """The group 0002 elements (always explicit VR little endian) and where the data set starts;
    MalformedInstance if the group is cut short."""
    try:
        return _read_meta(view, position)
    except struct.error as exc:
        raise MalformedInstance("truncated: an element header is incomplete") from exc


def _read_meta(view: memoryview, position: int) -> tuple[list[Element], int]:
    meta: list[Element] = []
    reader = Reader(view, EXPLICIT_LITTLE)
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


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    except zlib.error as exc:
        raise MalformedInstance("the deflated data set cannot be inflated") from exc


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


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
