"""Transfer syntax conversion (gateway/transcode.py) on pydicom's own test files: every native
syntax to every other, with every element's value kept (a round trip gives back the same values,
text byte for byte) and the pixels pydicom decodes unchanged; compressed ones to native little
endian where a decoder is installed, with pixels equal to pydicom's own decoding and the image
attributes changed only as native pixels require. What cannot be converted says so."""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from gateway import syntaxes
from gateway.errors import ConversionFailed, InstanceError
from gateway.spool import part10_dataset
from gateway.syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE,
    can_convert,
    fallback_syntaxes,
    pad_deflated,
)
from gateway.transcode import convert

ELE, ILE, EBE, DEFLATED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
                           EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
JPEG2000 = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"

# pydicom's test files in a native syntax: images of every layout, byte order and bit depth,
# structured reports, RT objects, private sequences, a waveform.
NATIVE_FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "MR_small_expb.dcm", "MR_small_padded.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_big_endian.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_overlay.dcm",
    "examples_palette.dcm", "examples_rgb_color.dcm", "image_dfl.dcm", "liver_1frame.dcm",
    "liver_expb_1frame.dcm", "rtdose.dcm", "rtdose_expb.dcm", "rtplan.dcm", "test-SR.dcm",
    "reportsi.dcm", "priv_SQ.dcm", "nested_priv_SQ.dcm", "waveform_ecg.dcm",
    "empty_charset_LEI.dcm", "no_meta_group_length.dcm",
]
# Compressed ones, each with pydicom's decoding as the reference.
COMPRESSED_FILES = [
    "JPEG2000.dcm", "693_J2KI.dcm", "MR_small_jp2klossless.dcm", "GDCMJ2K_TextGBR.dcm",
    "J2K_pixelrep_mismatch.dcm", "SC_rgb_gdcm_KY.dcm", "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_jpeg.dcm", "SC_rgb_small_odd_jpeg.dcm", "examples_ybr_color.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm", "rtdose_rle.dcm",
]
ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)
# pydicom warns about odd values in its test files (the point of some of them)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def source(name: str) -> tuple[bytes, str]:
    """A test file's data set bytes (no file meta) and its transfer syntax."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    data = Path(path).read_bytes()
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return bytes(part10_dataset(data)), syntax


def parse(data: bytes, syntax: str) -> Dataset:
    """``data`` read as pydicom reads a file in ``syntax`` (raw elements until used)."""
    raw = data
    if syntax == DEFLATED:
        raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    dataset = read_dataset(io.BytesIO(raw), syntax == ILE, syntax != EBE)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.UID(syntax)
    return dataset


def value_bytes(dataset: Dataset, tag: Any) -> bytes:
    """An element's value as encoded (raw, before pydicom converts it)."""
    element = dataset.get_item(tag)
    assert isinstance(element, RawDataElement)
    return bytes(element.value or b"")


def assert_same_elements(original: Dataset, result: Dataset, where: str = "") -> None:
    """Every element of ``original`` (group lengths aside) in ``result`` with the same value
    (both data sets in one syntax). A private element that lost its VR (through implicit VR)
    is UN with the same bytes; 8-bit Pixel Data may be OB or OW (PS3.5 A.1, A.2), same bytes."""
    expected = [t for t in original.keys() if t.element != 0]
    assert expected == [t for t in result.keys() if t.element != 0], where
    for tag in expected:
        raw_before, raw_after = original.get_item(tag), result.get_item(tag)
        before, after = original[tag], result[tag]
        at = f"{where}{tag}"
        if before.VR == "SQ":
            assert after.VR == "SQ" and len(before.value) == len(after.value), at
            for index, (a, b) in enumerate(zip(before.value, after.value, strict=True)):
                assert_same_elements(a, b, f"{at}[{index}].")
            continue
        if tag == 0x7FE00010 and before.VR != after.VR:
            # 8-bit OW (pairs swapped in big endian) written as OB: pixels compared by the caller
            assert {before.VR, after.VR} == {"OB", "OW"} and original.BitsAllocated <= 8, at
            continue
        if (after.VR == "UN" and before.VR != "UN") or tag == 0x7FE00010:
            assert tag.is_private or tag == 0x7FE00010, at
            assert same_bytes(raw_value(raw_before), raw_value(raw_after)), at
            continue
        assert after.VR == before.VR, at
        if isinstance(before.value, bytes):
            assert same_bytes(before.value, after.value), at
        else:
            assert after.value == before.value, at


def raw_value(element: Any) -> bytes:
    return bytes(element.value or b"")


def same_bytes(before: bytes, after: bytes) -> bool:
    """Equal; an odd-length value (malformed) may have gained its padding byte."""
    if len(before) % 2:
        return before.rstrip(b"\x00 ") == after.rstrip(b"\x00 ")
    return before == after


def pixels(dataset: Dataset) -> numpy.ndarray | None:
    """pydicom's decoding of the pixels, if the data set has an image."""
    return dataset.pixel_array if "PixelData" in dataset and "BitsAllocated" in dataset else None


# --- native <-> native ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NATIVE_FILES)
def test_every_native_syntax_converts_to_every_other_and_back_with_every_value_kept(
    name: str
) -> None:
    data, stored = source(name)
    original = parse(data, stored)
    reference = pixels(parse(data, stored))
    for target in sorted(NATIVE - {stored}):
        assert can_convert(stored, target)
        converted = convert(data, stored, target)
        if target == DEFLATED:
            assert len(converted) % 2 == 0  # PS3.5 A.5
        back = convert(converted, target, stored)
        assert_same_elements(original, parse(back, stored), f"{name} via {target}: ")
        if reference is not None:
            numpy.testing.assert_array_equal(pixels(parse(converted, target)), reference)
            numpy.testing.assert_array_equal(pixels(parse(back, stored)), reference)


def test_explicit_to_implicit_to_explicit_keeps_values_byte_for_byte() -> None:
    """Little endian both ways: nothing needs converting, so every value's bytes stay (and the
    pixel data is copied as it is)."""
    data, stored = source("CT_small.dcm")
    back = convert(convert(data, ELE, ILE), ILE, ELE)
    original, result = parse(data, ELE), parse(back, ELE)
    for tag in original.keys():
        if tag.element != 0 and original[tag].VR != "SQ":
            assert value_bytes(parse(data, ELE), tag) == value_bytes(result, tag), tag
    assert original.PixelData == result.PixelData


def dataset_with(elements: list[tuple[int, str, Any]], charset: str = "") -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    return ds


def encode(ds: Dataset, syntax: str) -> bytes:
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = syntax == ILE, syntax != EBE
    write_dataset(out, ds)
    return out.getvalue()


def test_a_private_element_of_unknown_vr_is_un_after_implicit_with_its_bytes() -> None:
    ds = dataset_with([(0x00100020, "LO", "ID1"), (0x00090010, "LO", "SOME VENDOR"),
                       (0x00091001, "LO", "private text"), (0x00091002, "US", 513)])
    data = encode(ds, ELE)
    result = parse(convert(convert(data, ELE, ILE), ILE, ELE), ELE)
    assert result[0x00091001].VR == "UN" and result[0x00091001].value == b"private text"
    assert result[0x00091002].VR == "UN" and result[0x00091002].value == b"\x01\x02"
    assert result[0x00090010].VR == "LO" and result.PatientID == "ID1"
    direct = parse(convert(data, ELE, EBE), EBE)  # explicit all the way: the VRs stay
    assert direct[0x00091001].VR == "LO" and direct[0x00091002].value == 513


def test_text_is_copied_as_its_bytes_even_when_invalid_in_its_character_set() -> None:
    """Values are never decoded and encoded again: bytes that are not UTF-8 in a UTF-8 data
    set come out exactly as they went in."""
    odd_name = b"M\xfcller^J\xf6rg "  # Latin-1 bytes under ISO_IR 192
    ds = dataset_with([(0x00080005, "CS", "ISO_IR 192"), (0x00100010, "PN", odd_name),
                       (0x00081030, "LO", "Étude cœur".encode())])
    data = encode(ds, ELE)
    for target in (ILE, EBE, DEFLATED):
        converted = parse(convert(data, ELE, target), target)
        assert value_bytes(converted, 0x00100010) == odd_name
        assert value_bytes(converted, 0x00081030) == "Étude cœur".encode()


def test_same_syntax_is_the_data_unchanged() -> None:
    data, stored = source("MR_small.dcm")
    assert convert(data, stored, stored) == data


# --- compressed -> native ------------------------------------------------------------------------


def decodable(name: str) -> bool:
    return syntaxes.has_decoder(source(name)[1])


@pytest.mark.parametrize("name", COMPRESSED_FILES)
def test_compressed_converts_to_native_little_endian_with_pydicoms_pixels(name: str) -> None:
    data, stored = source(name)
    if not decodable(name):
        pytest.skip(f"no decoder for {stored} installed")
    reference = parse(data, stored).pixel_array  # pydicom's own (YBR to RGB, as it does)
    for target in (ELE, ILE):
        original = parse(data, stored)
        assert can_convert(stored, target)
        result = parse(convert(data, stored, target), target)
        numpy.testing.assert_array_equal(result.pixel_array, reference)
        assert "PixelData" in result and not result["PixelData"].is_undefined_length
        frames = int(original.get("NumberOfFrames", 1))
        expected_length = (original.Rows * original.Columns * original.SamplesPerPixel * frames
                           * original.BitsAllocated // 8)
        assert len(result.PixelData) == expected_length + expected_length % 2
        if original.SamplesPerPixel > 1:
            assert result.PhotometricInterpretation == "RGB" and result.PlanarConfiguration == 0
        else:
            assert result.PhotometricInterpretation == original.PhotometricInterpretation
        assert result.get("LossyImageCompression") == original.get("LossyImageCompression")
        assert all(tag not in result for tag in ENCAPSULATION_ONLY)
        assert result.SOPInstanceUID == original.SOPInstanceUID
        if target == ELE:  # everything else as it was
            for tag in original.keys():
                if (tag.group != 0x0028 and tag.element != 0
                        and tag not in (0x7FE00010, *ENCAPSULATION_ONLY)):
                    assert result[tag].VR == original[tag].VR, (name, tag)
                    assert result[tag].value == original[tag].value, (name, tag)


def test_a_ybr_jpeg_becomes_rgb_and_lossy_compression_stays_recorded() -> None:
    data, stored = source("SC_rgb_jpeg_dcmtk.dcm")
    original = parse(data, stored)
    assert stored == JPEG_BASELINE and original.PhotometricInterpretation == "YBR_FULL"
    result = parse(convert(data, stored, ELE), ELE)
    assert result.PhotometricInterpretation == "RGB"
    assert result.get("LossyImageCompression") == original.get("LossyImageCompression")


def test_an_extended_offset_table_is_dropped_with_the_encapsulation() -> None:
    data, stored = source("MR_small_RLE.dcm")
    ds = parse(data, stored)
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = \
        pydicom.encaps.encapsulate_extended(frames)
    ds["PixelData"].is_undefined_length = True
    result = parse(convert(encode(ds, ELE), RLE, ILE), ILE)
    assert all(tag not in result for tag in ENCAPSULATION_ONLY)
    numpy.testing.assert_array_equal(result.pixel_array, parse(data, stored).pixel_array)


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_pixels_no_decoder_can_read_fail_with_both_syntaxes_and_the_cause_named(name: str) -> None:
    data, stored = source(name)
    with pytest.raises(ConversionFailed) as failed:
        convert(data, stored, ELE)
    assert isinstance(failed.value, InstanceError)
    assert str(failed.value) == (f"conversion from {pydicom.uid.UID(stored).name} to Explicit VR "
                                 "Little Endian failed (RuntimeError)")


# --- what converts -------------------------------------------------------------------------------


def test_which_pairs_convert() -> None:
    for a in NATIVE:
        for b in NATIVE:
            assert can_convert(a, b)
    assert can_convert(RLE, ELE) and can_convert(RLE, ILE)  # pydicom's own RLE decoder
    assert not can_convert(RLE, EBE) and not can_convert(RLE, DEFLATED)  # native LE only
    assert not can_convert(ELE, JPEG2000)  # never compressed
    assert not can_convert(MPEG2, ELE)  # video: no decoder
    assert not can_convert("1.2.3.4", ELE)
    assert fallback_syntaxes(ELE) == (ILE,)
    assert fallback_syntaxes(ILE) == (ELE,)
    assert fallback_syntaxes(EBE) == (ELE, ILE)
    assert fallback_syntaxes(DEFLATED) == (ELE, ILE)
    assert fallback_syntaxes(RLE) == (ELE, ILE)
    assert fallback_syntaxes(MPEG2) == ()


def test_without_a_decoder_nothing_compressed_converts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syntaxes, "has_decoder", lambda _syntax: False)
    assert not can_convert(JPEG2000, ELE) and fallback_syntaxes(JPEG2000) == ()
    assert can_convert(ELE, ILE)
    data, stored = source("JPEG2000.dcm")
    with pytest.raises(ConversionFailed, match="no conversion from JPEG 2000 Image Compression to "
                                               "Explicit VR Little Endian on this machine"):
        convert(data, stored, ELE)


def test_a_deflated_stream_of_odd_length_is_padded_with_one_nul() -> None:
    assert pad_deflated(b"abc") == b"abc\x00"
    assert pad_deflated(b"ab") == b"ab"
    data, _ = source("CT_small.dcm")
    deflated = convert(data, ELE, DEFLATED)
    assert len(deflated) % 2 == 0
    assert_same_elements(parse(data, ELE), parse(deflated, DEFLATED))
