"""Bytes <-> datasets at the edges: strict reading (truncation is an error) and encoding.

pydicom reads truncated files without complaint, so reading checks that every top-level element
got all the bytes its length announced and that no partial element is left over.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from gateway.errors import MalformedInstance, NotDicom

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an instance
PREAMBLE = 128
ZERO_PREAMBLE = b"\x00" * PREAMBLE
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
_TAG = struct.Struct("<HH")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_EXPLICIT_VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
})
_NOT_SPLIT = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})  # deflated, big endian
UNDEFINED_LENGTH = 0xFFFFFFFF
# A data set without preamble starts with a tag of one of these groups (little endian).
_BARE_DATASET_GROUPS = (b"\x02\x00", b"\x08\x00")


class NotAnInstance(NotDicom):
    """DICOM, but not a composite instance (e.g. a DICOMDIR)."""


def read_instance(data: bytes) -> Dataset:
    """Parse a whole DICOM file or bare data set; raise NotDicom or MalformedInstance."""
    ds, _ = _parse(data, stop_before_pixels=False)
    _check_instance(ds, len(data))
    if "Rows" in ds and not any(tag in ds for tag in PIXEL_DATA_TAGS):
        # A file cut exactly between two elements parses cleanly: an image without its
        # pixels is the visible trace.
        raise MalformedInstance("image attributes without pixel data (truncated?)")
    return ds


@dataclass(frozen=True)
class SplitInstance:
    """The data set up to Pixel Data, decoded; Pixel Data itself as the bytes that came in."""

    dataset: Dataset
    pixel_data: bytes | memoryview  # the whole encoded element, or empty


def split_instance(data: bytes) -> SplitInstance:
    """Parse everything but a trailing Pixel Data element, which is kept as raw bytes.

    De-identification never needs the pixels; leaving them out of decoding and re-encoding is
    most of the work saved on an image. Anything unusual (elements after Pixel Data, big endian,
    deflate) falls back to reading the whole data set.
    """
    head, position = _parse(data, stop_before_pixels=True)
    if position < len(data) and _pixel_element_ends_at_end(data, position, head):
        _check_instance(head, position)
        return SplitInstance(head, memoryview(data)[position:])
    return SplitInstance(read_instance(data), b"")


def _parse(data: bytes, stop_before_pixels: bool) -> tuple[Dataset, int]:
    if not data:
        raise NotDicom("empty file")
    has_magic = data[PREAMBLE : PREAMBLE + 4] == b"DICM"
    if not has_magic and data[:2] not in _BARE_DATASET_GROUPS:
        raise NotDicom("no DICOM preamble and no data set")
    stream = BytesIO(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(stream, force=not has_magic, stop_before_pixels=stop_before_pixels)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError,
                NotImplementedError, OverflowError) as exc:
            raise MalformedInstance(f"unreadable data set ({type(exc).__name__})") from exc
    if any("delimiter" in str(w.message) for w in caught):
        raise MalformedInstance("truncated: a sequence or item has no end delimiter")
    return ds, stream.tell()


def _pixel_element_ends_at_end(data: bytes, position: int, head: Dataset) -> bool:
    """Whether ``data[position:]`` is exactly one little-endian Pixel Data element."""
    if transfer_syntax_of(head) in _NOT_SPLIT or not head.is_little_endian:
        return False
    if data[position : position + 4] != PIXEL_DATA_TAG:
        return False
    if head.is_implicit_VR:
        length, value_start = _uint32(data, position + 4), position + 8
    else:
        if data[position + 4 : position + 6] not in (b"OB", b"OW"):
            return False
        length, value_start = _uint32(data, position + 8), position + 12
    if length != UNDEFINED_LENGTH:
        return value_start + length == len(data)
    return _fragments_end(data, value_start) == len(data)


def _fragments_end(data: bytes, offset: int) -> int:
    """Where encapsulated pixel data ends (after its sequence delimiter); -1 if malformed."""
    while offset + 8 <= len(data):
        tag, length = data[offset : offset + 4], _uint32(data, offset + 4)
        if tag == SEQUENCE_DELIMITER:
            return offset + 8
        if tag != ITEM_TAG:
            return -1
        offset += 8 + length
    return -1


def _uint32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _check_instance(ds: Dataset, end: int) -> None:
    _check_complete(ds, end)
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        raise NotAnInstance("a DICOMDIR (media directory), not an instance")
    if "SOPInstanceUID" not in ds:
        raise MalformedInstance("SOPInstanceUID is missing")


def _check_complete(ds: Dataset, size: int) -> None:
    element = None
    for tag in ds.keys():
        element = ds.get_item(tag)
        if (
            isinstance(element, RawDataElement)
            and element.length != UNDEFINED_LENGTH
            and element.value is not None
            and len(element.value) < element.length
        ):
            raise MalformedInstance("truncated: an element is shorter than its length")
    # Only a defined-length last element tells where the data set must end.
    if (
        isinstance(element, RawDataElement)
        and element.length != UNDEFINED_LENGTH
        and element.value_tell + element.length < size
    ):
        raise MalformedInstance("trailing bytes after the last element (truncated or corrupt)")


def transfer_syntax_of(ds: Dataset) -> UID:
    meta_syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if meta_syntax:
        return UID(meta_syntax)
    if not ds.is_little_endian:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian


def encode_instance(ds: Dataset, pixel_data: bytes | memoryview = b"") -> bytes:
    """A Part 10 file: preamble, file meta matching the data set, the data set as read, and
    ``pixel_data`` (an encoded Pixel Data element kept aside by split_instance) at the end."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax_of(ds)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    # The preamble is never copied: it may hold anything (dual-format files keep a TIFF header
    # and image there).
    ds.preamble = ZERO_PREAMBLE
    buffer = DicomBytesIO()
    try:
        if _can_copy_raw_elements(ds):
            buffer.write(ZERO_PREAMBLE + b"DICM")
            write_file_meta_info(buffer, meta, enforce_standard=True)
            _write_dataset_copying_raw(buffer, ds)
        else:
            ds.save_as(buffer, enforce_file_format=True)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        # E.g. a body in implicit VR under an explicit transfer syntax: fail closed.
        raise MalformedInstance(f"cannot encode the data set ({type(exc).__name__})") from exc
    if pixel_data:
        buffer.write(pixel_data)
    return buffer.getvalue()


def _can_copy_raw_elements(ds: Dataset) -> bool:
    """Untouched elements can be copied as read when the output encoding is the input's."""
    implicit, little = ds.original_encoding
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    return (
        implicit is not None
        and little is True
        and syntax not in _NOT_SPLIT
        and implicit == syntax.is_implicit_VR
        and ds.original_character_set == ds._character_set
    )


def _write_dataset_copying_raw(fp: DicomBytesIO, ds: Dataset) -> None:
    """pydicom's write_dataset, minus its per-element overhead for raw elements: an element
    the engine never decoded is written as its header and the very bytes it was read from."""
    implicit = bool(ds.original_encoding[0])
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written
        element = ds.get_item(tag)
        value = element.value
        if (
            isinstance(element, RawDataElement)
            and element.length != UNDEFINED_LENGTH
            and isinstance(value, bytes)
            and (implicit or element.VR in _EXPLICIT_VRS)
        ):
            fp.write(_raw_header(int(tag), element.VR, len(value), implicit))
            fp.write(value)
        else:
            write_data_element(fp, element, encodings)


def _raw_header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
    tag_bytes = _TAG.pack(tag >> 16, tag & 0xFFFF)
    if implicit:
        return tag_bytes + _UL.pack(length)
    assert vr is not None
    if vr in EXPLICIT_VR_LENGTH_32:
        return tag_bytes + vr.encode() + b"\x00\x00" + _UL.pack(length)
    if length > 0xFFFF:
        raise ValueError("value too long for a short explicit VR")  # pydicom would change VR
    return tag_bytes + vr.encode() + _US.pack(length)
