"""Bytes <-> datasets at the edges: strict reading (truncation is an error) and encoding.

pydicom reads truncated files without complaint, so reading checks that every top-level element
got all the bytes its length announced and that no partial element is left over.
"""

from __future__ import annotations

import warnings
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.errors import MalformedInstance, NotDicom

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an instance
PREAMBLE = 128
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
UNDEFINED_LENGTH = 0xFFFFFFFF
# A data set without preamble starts with a tag of one of these groups (little endian).
_BARE_DATASET_GROUPS = (b"\x02\x00", b"\x08\x00")


class NotAnInstance(NotDicom):
    """DICOM, but not a composite instance (e.g. a DICOMDIR)."""


def read_instance(data: bytes) -> Dataset:
    """Parse a DICOM file or bare data set; raise NotDicom or MalformedInstance."""
    if not data:
        raise NotDicom("empty file")
    has_magic = data[PREAMBLE : PREAMBLE + 4] == b"DICM"
    if not has_magic and data[:2] not in _BARE_DATASET_GROUPS:
        raise NotDicom("no DICOM preamble and no data set")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(BytesIO(data), force=not has_magic)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError,
                NotImplementedError, OverflowError) as exc:
            raise MalformedInstance(f"unreadable data set ({type(exc).__name__})") from exc
    if any("delimiter" in str(w.message) for w in caught):
        raise MalformedInstance("truncated: a sequence or item has no end delimiter")
    _check_complete(ds, len(data))
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        raise NotAnInstance("a DICOMDIR (media directory), not an instance")
    if "SOPInstanceUID" not in ds:
        raise MalformedInstance("SOPInstanceUID is missing")
    if "Rows" in ds and not any(tag in ds for tag in PIXEL_DATA_TAGS):
        # A file cut exactly between two elements parses cleanly: an image without its
        # pixels is the visible trace.
        raise MalformedInstance("image attributes without pixel data (truncated?)")
    return ds


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


def encode_instance(ds: Dataset) -> bytes:
    """A Part 10 file: preamble, file meta matching the data set, the data set as read."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax_of(ds)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    buffer = BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        # E.g. a body in implicit VR under an explicit transfer syntax: fail closed.
        raise MalformedInstance(f"cannot encode the data set ({type(exc).__name__})") from exc
    return buffer.getvalue()
