"""Blanking rectangles in real pixel data: every frame, every sample, every pixel layout and codec
pydicom's test images offer; nothing else changes; compressed input comes out decoded, exact."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pack_bits, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from gateway.errors import InstanceError, PixelCleaningFailed
from gateway.pixels.frames import blank, frames_of, frames_photometric, with_frames
from gateway.pixels.rules import Region

# Even offsets and widths: YBR 4:2:2 data blanks exactly these columns too (see the widening test).
TEXT_BANNER = Region(2, 4, 20, 6)
CORNER_PAST_THE_EDGE = Region(-6, -6, 10, 12)  # clipped to rows 0..5, columns 0..3

NATIVE = [
    "CT_small.dcm",  # 16-bit signed MONOCHROME2
    "emri_small.dcm",  # 10 frames, 12 bits in 16
    "SC_rgb.dcm",  # RGB 8-bit
    "SC_rgb_2frame.dcm",  # RGB, 2 frames
    "SC_rgb_16bit.dcm",  # RGB 16-bit
    "SC_rgb_expb.dcm",  # Explicit VR Big Endian
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian, 16-bit signed
    "SC_rgb_expb_16bit.dcm",  # Explicit VR Big Endian, RGB 16-bit
    "RG1_UNCR.dcm",  # MONOCHROME1, 15 bits in 16
    "SC_ybr_full_uncompressed.dcm",  # YBR_FULL
    "SC_ybr_full_422_uncompressed.dcm",  # YBR_FULL_422 (chroma shared by pixel pairs)
    "OBXXXX1A.dcm",  # PALETTE COLOR ultrasound
    "OBXXXX1A_2frame.dcm",  # PALETTE COLOR, 2 frames
    "liver.dcm",  # BitsAllocated 1, 3 frames
]
COMPRESSED = [
    "MR_small_RLE.dcm",  # RLE 16-bit signed
    "emri_small_RLE.dcm",  # RLE, 10 frames
    "SC_rgb_rle.dcm",  # RLE RGB
    "SC_rgb_rle_2frame.dcm",  # RLE RGB, 2 frames
    "OBXXXX1A_rle.dcm",  # RLE PALETTE COLOR
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, RGB
    "JPEG-LL.dcm",  # JPEG lossless 16-bit
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline (lossy), YBR_FULL
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "examples_ybr_color.dcm",  # ultrasound multi-frame, JPEG baseline YBR_FULL_422, 30 frames
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 lossless, 10 frames
    "US1_J2KR.dcm",  # JPEG 2000 lossless, YBR_RCT ultrasound
    "US1_J2KI.dcm",  # JPEG 2000 lossy, YBR_ICT ultrasound
]


def load(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return pydicom.dcmread(BytesIO(Path(path).read_bytes()))


def reread(ds: Dataset) -> Dataset:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(out.getvalue()))


def as_frames(ds: Dataset, array: np.ndarray) -> np.ndarray:
    """pydicom's pixel array as (frames, rows, columns, samples)."""
    return array.reshape(int(ds.get("NumberOfFrames", 1) or 1), ds.Rows, ds.Columns, -1)


def decoded(ds: Dataset) -> np.ndarray:
    """pydicom's own reading of the stored values (compressed YBR as RGB, as blank writes it)."""
    compressed = UID(ds.file_meta.TransferSyntaxUID).is_compressed
    return as_frames(ds, pixel_array(ds, as_rgb=compressed))


def blanked_mask(shape: tuple[int, ...], *slices: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros(shape[1:3], dtype=bool)
    for rows, columns in slices:
        mask[rows, columns] = True
    return mask


def expected_fill(ds_out: Dataset, fill: int) -> list[int]:
    """Grey `fill` as the output stores it: luminance with neutral chroma in YBR, else every sample."""
    if ds_out.PhotometricInterpretation.startswith("YBR"):
        return [fill, 128, 128]
    return [fill] * int(ds_out.SamplesPerPixel)


@pytest.mark.parametrize("name", NATIVE + COMPRESSED)
def test_regions_are_filled_in_every_frame_and_sample_and_nothing_else_changes(name):
    original = load(name)
    before = decoded(original)
    fill = 1 if original.BitsAllocated == 1 else 0

    out = reread(blank(load(name), [TEXT_BANNER, CORNER_PAST_THE_EDGE], fill))

    after = as_frames(out, pixel_array(out, as_rgb=False))
    assert after.shape == before.shape
    inside = blanked_mask(after.shape, (slice(4, 10), slice(2, 22)), (slice(0, 6), slice(0, 4)))
    assert (after[:, inside] == expected_fill(out, fill)).all()
    assert np.array_equal(after[:, ~inside], before[:, ~inside])


@pytest.mark.parametrize("name", NATIVE)
def test_native_pixel_data_is_changed_in_place_keeping_length_and_transfer_syntax(name):
    original = load(name)
    out = blank(load(name), [TEXT_BANNER], 1)
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert len(out.PixelData) == len(original.PixelData)
    assert out.PhotometricInterpretation == original.PhotometricInterpretation
    changed = np.frombuffer(out.PixelData, np.uint8) != np.frombuffer(original.PixelData, np.uint8)
    assert 0 < changed.sum() < len(original.PixelData) // 4


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "US1_J2KI.dcm", "examples_ybr_color.dcm"])
def test_compressed_input_comes_out_uncompressed_rgb_with_its_identity_and_lossy_history(name):
    original = load(name)
    out = reread(blank(load(name), [TEXT_BANNER], 0))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not out["PixelData"].is_undefined_length
    assert out.PhotometricInterpretation == "RGB"
    assert out.PlanarConfiguration == 0
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionRatio == original.LossyImageCompressionRatio
    assert int(out.get("NumberOfFrames", 1)) == int(original.get("NumberOfFrames", 1))


def test_a_blanked_ybr_region_shows_the_fill_grey_and_not_a_colour():
    out = reread(blank(load("SC_ybr_full_uncompressed.dcm"), [TEXT_BANNER], 0))
    rgb = pixel_array(out, as_rgb=True)
    assert (rgb[4:10, 2:22] <= 1).all()  # black, up to rounding in the colour conversion


def test_ybr_422_regions_widen_to_whole_pixel_pairs_because_the_pair_shares_chroma():
    original = load("SC_ybr_full_422_uncompressed.dcm")
    before = decoded(original)
    out = reread(blank(load("SC_ybr_full_422_uncompressed.dcm"), [Region(3, 0, 4, 5)], 0))
    after = as_frames(out, pixel_array(out, as_rgb=False))
    assert (after[:, 0:5, 2:8] == [0, 128, 128]).all()  # columns 3..6 asked, pairs 2..7 blanked
    untouched = np.ones(after.shape[1:3], dtype=bool)
    untouched[0:5, 2:8] = False
    assert np.array_equal(after[:, untouched], before[:, untouched])


def test_planar_configuration_1_is_blanked_in_every_plane():
    ds = load("SC_rgb_2frame.dcm")
    colour_by_pixel = as_frames(ds, pixel_array(ds))
    ds.PixelData = colour_by_pixel.transpose(0, 3, 1, 2).tobytes()  # colour by plane
    ds.PlanarConfiguration = 1
    out = reread(blank(ds, [TEXT_BANNER], 0))
    after = as_frames(out, pixel_array(out))
    inside = blanked_mask(after.shape, (slice(4, 10), slice(2, 22)))
    assert (after[:, inside] == 0).all()
    assert np.array_equal(after[:, ~inside], colour_by_pixel[:, ~inside])


def test_single_bit_frames_that_do_not_end_on_a_byte_are_blanked_exactly():
    rng = np.random.default_rng(13)
    bits = rng.integers(0, 2, size=(3, 5, 7), dtype=np.uint8)  # 35 bits a frame
    ds = single_bit_dataset(bits)
    out = reread(blank(ds, [Region(1, 1, 3, 2)], 0, in_frames=[1]))
    after = pixel_array(out).reshape(bits.shape)
    expected = bits.copy()
    expected[1, 1:3, 1:4] = 0
    assert np.array_equal(after, expected)


def single_bit_dataset(bits: np.ndarray) -> Dataset:
    ds = load("liver_1frame.dcm")
    ds.NumberOfFrames, ds.Rows, ds.Columns = bits.shape
    packed = pack_bits(bits.ravel())
    ds.PixelData = packed + b"\0" * (len(packed) % 2)
    for keyword in ("PerFrameFunctionalGroupsSequence", "SegmentSequence"):
        if keyword in ds:
            del ds[keyword]
    return ds


def test_only_the_chosen_frames_are_blanked_when_frames_are_named():
    original = decoded(load("emri_small.dcm"))
    after = frames_of(blank(load("emri_small.dcm"), [TEXT_BANNER], 0, in_frames=[3, 7]))
    assert (after[[3, 7], 4:10, 2:22] == 0).all()
    others = [i for i in range(10) if i not in (3, 7)]
    assert np.array_equal(after[others], original[others])


@pytest.mark.parametrize(("name", "fill", "stored"), [
    ("emri_small.dcm", 5000, 4095),  # 12 bits stored
    ("OBXXXX1A.dcm", 300, 255),  # a palette index of 8 bits
    ("CT_small.dcm", -40000, -32768),  # signed 16 bits
    ("CT_small.dcm", -1000, -1000),
])
def test_the_fill_is_clipped_to_the_values_the_pixels_can_store(name, fill, stored):
    after = frames_of(blank(load(name), [TEXT_BANNER], fill))
    assert (after[:, 4:10, 2:22] == stored).all()


def test_a_region_entirely_outside_the_image_changes_nothing():
    original = load("US1_UNCR.dcm")
    out = blank(load("US1_UNCR.dcm"), [Region(640, 0, 40, 40), Region(0, 480, 10, 10)], 0)
    assert out.PixelData == original.PixelData


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "liver.dcm", "SC_rgb_expb.dcm",
                                  "emri_small.dcm"])
def test_frames_read_and_written_back_unchanged_leave_the_pixel_data_bytes_identical(name):
    original = load(name)
    ds = load(name)
    with_frames(ds, frames_of(ds))
    assert ds.PixelData == original.PixelData


def test_frames_written_back_to_a_compressed_instance_come_out_uncompressed():
    ds = load("US1_J2KR.dcm")
    assert frames_photometric(ds) == "RGB"
    pixels = frames_of(ds)
    pixels[0, 100:120, 200:260, :] = [255, 0, 0]
    out = reread(with_frames(ds, pixels))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(as_frames(out, pixel_array(out)), pixels)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_an_undecodable_compressed_instance_fails_cleaning_and_goes_to_quarantine(name):
    ds = load(name)
    ds.PixelData = encapsulate([b"\x00\x01garbage that no codec decodes" * 4])
    with pytest.raises(PixelCleaningFailed) as failure:
        blank(ds, [TEXT_BANNER], 0)
    assert isinstance(failure.value, InstanceError)
    assert failure.value.reason == "pixel-cleaning-failed"
    with pytest.raises(PixelCleaningFailed):
        frames_of(ds)


def test_native_pixel_data_shorter_than_the_image_fails_cleaning():
    ds = load("CT_small.dcm")
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(PixelCleaningFailed, match="shorter"):
        blank(ds, [TEXT_BANNER], 0)


def test_an_instance_without_pixel_data_fails_cleaning():
    ds = load("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(PixelCleaningFailed, match="no Pixel Data"):
        blank(ds, [TEXT_BANNER], 0)
