"""Transfer syntax conversion for the forwarder: a data set's bytes (no file meta) in one syntax
in, the same data set in another out. Pure: no network, no disk.

Native syntaxes convert into each other (implicit and explicit VR little endian, explicit VR big
endian, deflated explicit VR little endian); an encapsulated (compressed) one converts to native
little endian when a pydicom pixel decoder for it is installed. pydicom parses the data set and
decodes the pixels; the encoding is done here, so that values are never decoded and encoded
again where the bytes need not change:

- every value is copied as its bytes (text in whatever character set it is in, private values
  of unknown VR), byte swapped by its VR when the byte order changes, and numbers of known VR
  converted by pydicom then;
- sequences and items are written with undefined length (nothing to measure);
- group lengths (gggg,0000) are left out: re-encoding makes them wrong, and they are retired.

A private element whose VR is unknown is UN in an explicit VR output (PS3.5 6.2.2).
Decompressing changes what must change for native pixels (Photometric Interpretation YBR -> RGB,
Planar Configuration, Number of Frames; the extended offset table goes) and keeps Lossy Image
Compression as it was: the pixels are what the compressed ones decode to.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.tag import BaseTag
from pydicom.uid import UID

from gateway.errors import ConversionFailed
from gateway.syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE,
    can_convert,
    pad_deflated,
    syntax_name,
)

# (implicit VR, little endian) of each native syntax once inflated
_ENCODINGS = {
    IMPLICIT_VR_LITTLE_ENDIAN: (True, True),
    EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    EXPLICIT_VR_BIG_ENDIAN: (False, False),
}

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# Encapsulation only: meaningless for native pixels.
ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (and its lengths)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# Byte-stream VRs whose parts are swapped when the byte order changes (part size in bytes).
SWAPPED_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
# Values that are numbers (or tags): pydicom converts them when the byte order changes.
NUMBER_VRS = frozenset({"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV"})
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                      "UC", "UR", "UT"})


def convert(data: bytes | memoryview, source: str, target: str) -> bytes:
    """The data set ``data`` (encoded in ``source``) encoded in ``target``; ConversionFailed
    (naming both syntaxes and the cause's class, never a value) if that cannot be done."""
    if source == target:
        return bytes(data)
    if not can_convert(source, target):
        raise ConversionFailed(f"no conversion from {syntax_name(source)} to "
                               f"{syntax_name(target)} on this machine")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's about odd values; the bytes are kept
            dataset = _read(data, source)
            if source not in NATIVE:
                _decompress(dataset, source)
            return _write(dataset, target, source_little=_ENCODINGS.get(source, (False, True))[1])
    except ConversionFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a codec or parser raises: one instance's fault
        raise ConversionFailed(f"conversion from {syntax_name(source)} to {syntax_name(target)} "
                               f"failed ({type(exc).__name__})") from exc


# --- reading ---


def _read(data: bytes | memoryview, source: str) -> Dataset:
    raw = bytes(data)
    if source == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
    implicit, little = _ENCODINGS.get(source, (False, True))  # encapsulated: explicit LE
    dataset = read_dataset(io.BytesIO(raw), implicit, little)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(source)
    return dataset


def _decompress(dataset: Dataset, source: str) -> None:
    """Native pixels in place of encapsulated ones (if there are pixels at all)."""
    from pydicom.pixels.utils import decompress

    if PIXEL_DATA not in dataset:
        return
    decompress(dataset, as_rgb=True, generate_instance_uid=False)
    for tag in ENCAPSULATION_ONLY:
        if tag in dataset:
            del dataset[tag]


# --- writing ---


def _write(dataset: Dataset, target: str, source_little: bool) -> bytes:
    implicit, little = _ENCODINGS[target]
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit, little
    _Encoder(out, source_little).dataset(dataset, [])
    encoded = out.getvalue()
    if target == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return bytes(pad_deflated(compressor.compress(encoded) + compressor.flush()))
    return encoded


class _Encoder:
    """Writes a parsed data set in ``out``'s encoding, copying value bytes where it can."""

    def __init__(self, out: DicomBytesIO, source_little: bool) -> None:
        self.out = out
        self.implicit = bool(out.is_implicit_VR)
        self.little = bool(out.is_little_endian)
        self.source_little = source_little
        self.swap = source_little != self.little
        self._u16 = struct.Struct("<H" if self.little else ">H")
        self._u32 = struct.Struct("<L" if self.little else ">L")

    def dataset(self, dataset: Dataset, ancestors: list[Dataset]) -> None:
        encodings = dataset.get("SpecificCharacterSet", None) or "iso8859"
        for tag in sorted(dataset.keys()):
            if tag.element == 0:
                continue  # group length: wrong once re-encoded (and retired)
            self.element(dataset, BaseTag(tag), ancestors, encodings)

    def element(self, dataset: Dataset, tag: BaseTag, ancestors: list[Dataset],
                encodings: str | list[str]) -> None:
        stored = dataset.get_item(tag)
        element = correct_ambiguous_vr_element(dataset[tag], dataset, self.source_little,
                                               ancestors)
        assert isinstance(element, DataElement)  # dataset[tag] converted it
        vr = str(element.VR)
        explicit_vr = stored.VR if isinstance(stored, RawDataElement) else None
        if explicit_vr and vr != "SQ":
            vr = str(explicit_vr)  # as the source said (a UN stays UN)
        if tag == PIXEL_DATA and vr in ("OB", "OW") and (explicit_vr is None or self.swap):
            vr = _native_pixel_vr(dataset)  # implicit VR reads it as OW, whatever its depth
        if vr == "SQ":
            self._sequence(tag, element, [dataset, *ancestors])
            return
        value = self._value_bytes(stored, element, vr)
        if value is None:  # a number to be written in the other byte order: pydicom's job
            write_data_element(self.out, element, encodings)
            return
        if self.swap and (vr in SWAPPED_BYTES or tag == PIXEL_DATA):
            value = _swapped(value, self._part_size(dataset, tag, explicit_vr or vr, vr))
        if len(value) % 2:
            value += b" " if vr in TEXT_VRS else b"\x00"
        if not self.implicit and vr not in LONG_VRS and len(value) > 0xFFFF:
            vr = "UN"  # too long for its VR's 16-bit length field (PS3.5 6.2.2)
        self._header(tag, vr, len(value))
        self.out.write(value)

    def _value_bytes(self, stored: DataElement | RawDataElement, element: DataElement,
                     vr: str) -> bytes | None:
        """The value as bytes to copy; None if it must be converted (numbers, byte order)."""
        if isinstance(stored, RawDataElement):
            if stored.length == UNDEFINED:
                raise ConversionFailed(f"an undefined length {vr} value at {stored.tag} that is "
                                       "not a sequence")
            if self.swap and vr in NUMBER_VRS:
                return None
            return bytes(stored.value or b"")
        value = element.value
        if isinstance(value, bytes | bytearray) and vr not in NUMBER_VRS:
            return bytes(value)
        return None

    def _part_size(self, dataset: Dataset, tag: BaseTag, source_vr: str, vr: str) -> int:
        """The size of the parts whose bytes are reversed. Pixel Data's depends on its VR on the
        big endian side: OB is bytes (nothing to swap); OW holds words, or samples of
        32 or 64 bits (as pydicom reads them)."""
        if tag != PIXEL_DATA:
            return SWAPPED_BYTES.get(vr, 1)
        big_endian_vr = vr if self.source_little else source_vr
        if big_endian_vr != "OW":
            return 1
        return max(2, int(dataset.get("BitsAllocated", 16)) // 8)

    def _sequence(self, tag: BaseTag, element: DataElement, ancestors: list[Dataset]) -> None:
        self._header(tag, "SQ", UNDEFINED)
        for item in element.value:
            self._tag(ITEM)
            self.out.write(self._u32.pack(UNDEFINED))
            self.dataset(item, ancestors)
            self._tag(ITEM_END)
            self.out.write(self._u32.pack(0))
        self._tag(SEQUENCE_END)
        self.out.write(self._u32.pack(0))

    def _tag(self, tag: int) -> None:
        self.out.write(self._u16.pack(tag >> 16) + self._u16.pack(tag & 0xFFFF))

    def _header(self, tag: int, vr: str, length: int) -> None:
        self._tag(tag)
        if self.implicit:
            self.out.write(self._u32.pack(length))
        elif vr in LONG_VRS:
            self.out.write(vr.encode("ascii") + b"\x00\x00" + self._u32.pack(length))
        else:
            self.out.write(vr.encode("ascii") + self._u16.pack(length))


def _native_pixel_vr(dataset: Dataset) -> str:
    """Native Pixel Data's VR in an explicit VR syntax (PS3.5 A.2, A.3): OB up to 8 bits
    allocated (no bytes to swap), OW beyond."""
    return "OW" if int(dataset.get("BitsAllocated", 16)) > 8 else "OB"


def _swapped(value: bytes, size: int) -> bytes:
    """``value`` with the bytes of each ``size``-byte part reversed."""
    if size < 2 or len(value) % size:
        return value
    import numpy

    return numpy.frombuffer(value, dtype=f"<u{size}").byteswap().tobytes()
