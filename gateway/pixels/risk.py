"""Which instances may show identifying text in their pixels (cheap: attributes only).

Every instance passes here, so this module holds plain data and imports nothing heavy: no
numpy, no codecs. Decisions rest on BurnedInAnnotation, the SOP class and the modality; never on
the pixels, and never on whether Pixel Data happens to be loaded (a header-only read must not make
an instance look safe).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# Classes whose images commonly carry burned-in patient or institution text (PS3.4 Annex B).
ULTRASOUND_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
})
SECONDARY_CAPTURE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image Storage
})
ANGIOGRAPHY_FLUOROSCOPY_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image Storage
    "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane Image Storage (Retired)
})
AT_RISK_CLASSES = ULTRASOUND_CLASSES | SECONDARY_CAPTURE_CLASSES | ANGIOGRAPHY_FLUOROSCOPY_CLASSES

# Modalities that commonly carry burned-in text whatever class the device chose ("SC" is not a
# defined term but devices write it; "DOC" marks scanned documents).
AT_RISK_MODALITIES = frozenset({"US", "XA", "RF", "OT", "SC", "DOC"})

# Neither can be cleaned here: a video is not decoded frame by frame, a document is not an image.
VIDEO_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image Storage",
}
ENCAPSULATED_DOCUMENT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA Storage",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL Storage",
    "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ Storage",
    "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL Storage",
}
# MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 transfer syntaxes (PS3.5 Section 8.2), fragmentable too.
VIDEO_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1",
    "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.101.1",
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.103.1",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1",
    "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.106.1",
    "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
})


def at_risk(ds: Dataset) -> bool:
    """Whether the instance's pixels may show identifying text and must be cleaned or held.

    BurnedInAnnotation YES (or any value other than NO: fail closed) says so; NO says not, except
    for videos and documents, which are always at risk. Without a value, the SOP class and the
    modality decide."""
    return facts_at_risk(_sop_class(ds), _text(ds, "Modality"), _text(ds, "BurnedInAnnotation"),
                         _transfer_syntax(ds))


def facts_at_risk(sop_class: str, modality: str, burned_in: str, transfer_syntax: str) -> bool:
    """``at_risk`` from the four facts it reads (the engine hands them over without a decode)."""
    if quarantine_reason(sop_class, transfer_syntax) is not None:
        return True
    burned_in = burned_in.strip().upper()
    if burned_in:
        return burned_in != "NO"
    return sop_class in AT_RISK_CLASSES or modality.strip().upper() in AT_RISK_MODALITIES


def always_quarantined(ds: Dataset) -> str | None:
    """The quarantine reason for an instance no pixel cleaning can make safe (a video, an
    encapsulated document), or None. The reason names the standard class, never a value."""
    return quarantine_reason(_sop_class(ds), _transfer_syntax(ds))


def quarantine_reason(sop_class: str, transfer_syntax: str) -> str | None:
    """``always_quarantined`` from the SOP class and transfer syntax."""
    if sop_class in VIDEO_CLASSES:
        return f"video cannot be cleaned of burned-in text ({VIDEO_CLASSES[sop_class]})"
    if sop_class in ENCAPSULATED_DOCUMENT_CLASSES:
        return f"encapsulated document cannot be cleaned ({ENCAPSULATED_DOCUMENT_CLASSES[sop_class]})"
    if transfer_syntax in VIDEO_TRANSFER_SYNTAXES:
        return "video transfer syntax: pixel data cannot be cleaned of burned-in text"
    return None


def _sop_class(ds: Dataset) -> str:
    return _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")


def _transfer_syntax(ds: Dataset) -> str:
    return _text(getattr(ds, "file_meta", None), "TransferSyntaxUID")


def _text(ds: Dataset | None, keyword: str) -> str:
    """The attribute's value as stripped text ('' when absent or empty); multi-valued joined."""
    value = None if ds is None else ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):  # an element read as UN
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) and isinstance(value, Iterable):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")
