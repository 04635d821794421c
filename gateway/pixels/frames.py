"""Pixel frames of an instance: read them, write them, blank rectangles in them.

Only imported for an instance at risk (it brings numpy and, for compressed data, the codecs).

Native Pixel Data is changed in place: same length, same transfer syntax, the bytes outside the
blanked regions untouched. Compressed Pixel Data is decoded entirely (pydicom's decoders with the
pylibjpeg / pyjpegls plugins) and written uncompressed, Explicit VR Little Endian: exact (no loss
is added to lossy data, nothing is lost from lossless data) and accepted by every receiver. A YBR
colour space the codec decodes to RGB (JPEG, JPEG 2000 YBR_ICT/YBR_RCT) is written as RGB, colour
by pixel (PlanarConfiguration 0). LossyImageCompression and its ratio and method are left as
they are: the history they tell stays true.

``fill`` is the stored value of a blanked pixel: every sample of a monochrome (so 0 shows white in
MONOCHROME1), palette (there an index) or RGB pixel gets it; a YBR pixel gets it as luminance with
neutral chroma (Cb = Cr = the middle of the range), which is RGB (fill, fill, fill) in YBR (zero
chroma would paint the region green). It is clipped to the values BitsStored and
PixelRepresentation allow; single bits are set when fill > 0. In
YBR_FULL_422 native data two horizontal neighbours share their chroma, so a region is widened to
whole pairs (at most one column each side): clean rather than leave a colour trace of the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from gateway.errors import PixelCleaningFailed

if TYPE_CHECKING:
    from gateway.pixels.rules import Region

YBR_FULL_ROW_PAIRS = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422"})
YBR_NEUTRAL_CHROMA = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422"})
# A FileDataset in is a FileDataset out: the data set is changed in place and returned.
AnyDataset = TypeVar("AnyDataset", bound=Dataset)
# Encapsulation attributes that describe compressed frames only.
ENCAPSULATION_KEYWORDS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")


@dataclass(frozen=True)
class Layout:
    """How native Pixel Data is laid out, from the Image Pixel module and the transfer syntax."""

    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    planar: int
    photometric: str
    big_endian: bool

    @property
    def pairs_share_chroma(self) -> bool:
        return self.photometric in YBR_FULL_ROW_PAIRS

    @property
    def dtype(self) -> np.dtype:
        kind = "i" if self.signed else "u"
        return np.dtype(f"{'>' if self.big_endian else '<'}{kind}{self.bits_allocated // 8}")

    @property
    def values(self) -> int:
        """Stored values in all frames (a YBR 4:2:2 pair stores four values for two pixels)."""
        per_pixel = 2 if self.pairs_share_chroma else self.samples
        return self.frames * self.rows * self.columns * per_pixel

    @property
    def length(self) -> int:
        """Bytes the Pixel Data needs (without the padding to an even length)."""
        return -(-self.values * self.bits_allocated // 8)

    @property
    def value_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


def blank(ds: AnyDataset, regions: Sequence[Region], fill: int,
          in_frames: Sequence[int] | None = None) -> AnyDataset:
    """Set every region to ``fill`` in every frame (or only ``in_frames``, indices from 0) and every
    sample; pixels outside the regions keep their values. Regions are clipped to the image.
    Modifies ``ds`` and returns it; compressed pixels come out decoded (see the module text).
    Raises PixelCleaningFailed when the pixels cannot be decoded or their layout is not one
    this module can write."""
    if is_compressed(ds):
        decompress(ds)
    layout = native_layout(ds)
    buffer = _pixel_buffer(ds)
    chosen = _frame_selection(layout, in_frames)
    if layout.bits_allocated == 1:
        _blank_bits(buffer, layout, regions, fill, chosen)
    elif layout.pairs_share_chroma:
        _blank_chroma_pairs(_pair_view(buffer, layout), layout, regions, fill, chosen)
    else:
        _blank_samples(_sample_view(buffer, layout), layout, regions, fill, chosen)
    _store(ds, buffer)
    _widen_pixel_value_range(ds, layout, fill)
    return ds


def frames_of(ds: Dataset) -> np.ndarray:
    """The pixels as an array (frames, rows, columns, samples), a copy in the machine's byte order:
    native values as stored (YBR 4:2:2 chroma repeated for both pixels of a pair, single bits as
    0/1); compressed pixels decoded as ``blank`` would write them (see ``frames_photometric``).
    ``ds`` is not changed."""
    if is_compressed(ds):
        return _decoded_frames(ds)
    layout = native_layout(ds)
    buffer = _pixel_buffer(ds)
    if layout.bits_allocated == 1:
        return _bit_view(_unpacked_bits(buffer), layout).copy()
    if layout.pairs_share_chroma:
        pairs = _pair_view(buffer, layout)
        chroma = np.repeat(pairs[..., 2:4], 2, axis=2)
        luma = pairs[..., 0:2].reshape(layout.frames, layout.rows, layout.columns, 1)
        both = np.concatenate([luma, chroma], axis=3)
        return both.astype(both.dtype.newbyteorder("="))
    view = _sample_view(buffer, layout)
    return view.astype(view.dtype.newbyteorder("="))


def frames_photometric(ds: Dataset) -> str:
    """The PhotometricInterpretation of what ``frames_of`` returns: compressed YBR data decodes to
    RGB; native YBR 4:2:2 comes out as full YBR; everything else as the instance says."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if is_compressed(ds) and photometric.startswith("YBR"):
        return "RGB"
    if photometric in YBR_FULL_ROW_PAIRS:
        return "YBR_FULL"
    return photometric


def with_frames(ds: AnyDataset, frames: np.ndarray) -> AnyDataset:
    """Write ``frames`` (shaped as ``frames_of`` returns them, in the colour space
    ``frames_photometric`` names) as the instance's pixels: values clipped to the stored range;
    YBR 4:2:2 chroma averaged over each pair. Compressed instances come out decoded, as with
    ``blank``. Modifies ``ds`` and returns it."""
    if is_compressed(ds):
        decompress(ds)
    layout = native_layout(ds)
    expected = (layout.frames, layout.rows, layout.columns, layout.samples)
    if frames.shape != expected:
        raise ValueError(f"frames shaped {frames.shape}, the instance needs {expected}")
    buffer = _pixel_buffer(ds)
    low, high = layout.value_range
    values = np.clip(frames.astype(np.int64), low, high)
    if layout.bits_allocated == 1:
        unpacked = _unpacked_bits(buffer)
        _bit_view(unpacked, layout)[...] = values
        _repack_bits(buffer, unpacked)
    elif layout.pairs_share_chroma:
        pairs = _pair_view(buffer, layout)
        pairs[..., 0:2] = values[..., 0].reshape(pairs.shape[:3] + (2,))
        chroma = values[..., 1:3].reshape(pairs.shape[:3] + (2, 2))
        pairs[..., 2:4] = (chroma.sum(axis=3) + 1) // 2
    else:
        _sample_view(buffer, layout)[...] = values
    _store(ds, buffer)
    return ds


def is_compressed(ds: Dataset) -> bool:
    """Whether the Pixel Data is encapsulated (compressed) according to the transfer syntax."""
    return UID(_transfer_syntax(ds)).is_encapsulated


def decompress(ds: Dataset) -> None:
    """Decode all frames in place: Explicit VR Little Endian, YBR as RGB, colour by pixel."""
    from pydicom.pixels import decompress as pydicom_decompress

    syntax = UID(_transfer_syntax(ds))
    _require_pixel_data(ds)
    try:
        pydicom_decompress(ds, as_rgb=True, generate_instance_uid=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise PixelCleaningFailed(
            f"cannot decode the compressed Pixel Data ({syntax.name}: {type(exc).__name__})") from exc
    for keyword in ENCAPSULATION_KEYWORDS:
        if keyword in ds:
            del ds[keyword]


def native_layout(ds: Dataset) -> Layout:
    """The layout of native Pixel Data; PixelCleaningFailed (naming the attribute) when the Image
    Pixel module does not describe one this module can read and write."""
    _require_pixel_data(ds)
    bits_allocated = _positive(ds, "BitsAllocated")
    samples = _positive(ds, "SamplesPerPixel", default=1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    layout = Layout(
        frames=_positive(ds, "NumberOfFrames", default=1),
        rows=_positive(ds, "Rows"),
        columns=_positive(ds, "Columns"),
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=min(_positive(ds, "BitsStored", default=bits_allocated), bits_allocated),
        signed=_integer(ds, "PixelRepresentation", default=0) == 1,
        planar=_integer(ds, "PlanarConfiguration", default=0) if samples > 1 else 0,
        photometric=photometric,
        big_endian=not UID(_transfer_syntax(ds)).is_little_endian,
    )
    _check_supported(ds, layout)
    return layout


def _check_supported(ds: Dataset, layout: Layout) -> None:
    if layout.bits_allocated not in (1, 8, 16, 32):
        raise PixelCleaningFailed("BitsAllocated is not 1, 8, 16 or 32")
    if layout.planar not in (0, 1):
        raise PixelCleaningFailed("PlanarConfiguration is not 0 or 1")
    if layout.pairs_share_chroma and (layout.samples != 3 or layout.columns % 2 or layout.planar):
        raise PixelCleaningFailed("YBR 4:2:2 Pixel Data with an odd width, planar or not 3 samples")
    if layout.photometric == "YBR_PARTIAL_420":
        raise PixelCleaningFailed("native YBR_PARTIAL_420 Pixel Data is not supported")
    if layout.big_endian and layout.bits_allocated == 8 and ds["PixelData"].VR == "OW":
        raise PixelCleaningFailed("8-bit Pixel Data in OW words, big endian, is not supported")
    element = ds["PixelData"]
    if element.is_undefined_length or not isinstance(element.value, (bytes, bytearray)):
        raise PixelCleaningFailed("Pixel Data is encapsulated but the transfer syntax is native")
    if len(element.value) < layout.length:
        raise PixelCleaningFailed("Pixel Data is shorter than the Image Pixel module says")


def _require_pixel_data(ds: Dataset) -> None:
    if "PixelData" in ds:
        return
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise PixelCleaningFailed("float Pixel Data cannot be cleaned")
    raise PixelCleaningFailed("no Pixel Data (7FE0,0010) to clean")


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise PixelCleaningFailed("no TransferSyntaxUID in the file meta information")
    return str(syntax)


def _integer(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise PixelCleaningFailed(f"{keyword} is not an integer") from exc


def _positive(ds: Dataset, keyword: str, default: int | None = None) -> int:
    if default is None and ds.get(keyword) in (None, ""):
        raise PixelCleaningFailed(f"{keyword} is missing")
    value = _integer(ds, keyword, default or 0)
    if value < 1:
        raise PixelCleaningFailed(f"{keyword} is not a positive integer")
    return value


def _pixel_buffer(ds: Dataset) -> bytearray:
    """A mutable copy of the Pixel Data bytes (pydicom holds them immutable)."""
    return bytearray(ds.PixelData)


def _store(ds: Dataset, buffer: bytearray) -> None:
    ds.PixelData = bytes(buffer)


def _sample_view(buffer: bytearray, layout: Layout) -> np.ndarray:
    """A writable view (frames, rows, columns, samples) over 8/16/32-bit native Pixel Data."""
    flat = np.frombuffer(buffer, dtype=layout.dtype, count=layout.values)
    if layout.planar == 1:
        return flat.reshape(layout.frames, layout.samples, layout.rows, layout.columns).transpose(0, 2, 3, 1)
    return flat.reshape(layout.frames, layout.rows, layout.columns, layout.samples)


def _pair_view(buffer: bytearray, layout: Layout) -> np.ndarray:
    """A writable view (frames, rows, column pairs, [Y1, Y2, Cb, Cr]) over YBR 4:2:2 data."""
    flat = np.frombuffer(buffer, dtype=layout.dtype, count=layout.values)
    return flat.reshape(layout.frames, layout.rows, layout.columns // 2, 4)


def _unpacked_bits(buffer: bytearray) -> np.ndarray:
    """Every bit of single-bit Pixel Data, one per byte (the first pixel in the lowest bit)."""
    return np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")


def _bit_view(unpacked: np.ndarray, layout: Layout) -> np.ndarray:
    """A view (frames, rows, columns, samples) of unpacked bits; frames run on without padding."""
    return unpacked[: layout.values].reshape(layout.frames, layout.rows, layout.columns, layout.samples)


def _repack_bits(buffer: bytearray, unpacked: np.ndarray) -> None:
    """Pack every bit back, so padding bits after the last frame stay as they were."""
    buffer[:] = np.packbits(unpacked, bitorder="little").tobytes()


def _frame_selection(layout: Layout, in_frames: Sequence[int] | None) -> list[int] | slice:
    if in_frames is None:
        return slice(None)
    chosen = sorted(set(in_frames))
    if chosen and (chosen[0] < 0 or chosen[-1] >= layout.frames):
        raise IndexError("frame index outside the instance's frames")
    return chosen


def _clipped(region: Region, layout: Layout) -> tuple[slice, slice] | None:
    """The region's rows and columns inside the image, or None when none are."""
    top, bottom = max(region.y, 0), min(region.y + region.height, layout.rows)
    left, right = max(region.x, 0), min(region.x + region.width, layout.columns)
    if top >= bottom or left >= right:
        return None
    return slice(top, bottom), slice(left, right)


def _fill_samples(layout: Layout, fill: int) -> np.ndarray:
    """One pixel's sample values for a blanked region (see the module text)."""
    low, high = layout.value_range
    value = min(max(fill, low), high)
    samples = [value] * layout.samples
    if layout.photometric in YBR_NEUTRAL_CHROMA and layout.samples == 3:
        samples[1:] = [_neutral_chroma(layout)] * 2
    return np.array(samples, dtype=layout.dtype)


def _neutral_chroma(layout: Layout) -> int:
    return 1 << (layout.bits_stored - 1)


def _blank_samples(view: np.ndarray, layout: Layout, regions: Sequence[Region], fill: int,
                   chosen: list[int] | slice) -> None:
    pixel = _fill_samples(layout, fill)
    for region in regions:
        clipped = _clipped(region, layout)
        if clipped is not None:
            rows, columns = clipped
            view[chosen, rows, columns, :] = pixel


def _blank_chroma_pairs(pairs: np.ndarray, layout: Layout, regions: Sequence[Region], fill: int,
                        chosen: list[int] | slice) -> None:
    luma, chroma, _ = _fill_samples(layout, fill)
    for region in regions:
        clipped = _clipped(region, layout)
        if clipped is not None:
            rows, columns = clipped
            # Whole pairs: a half-blanked pair would keep the chroma of a text pixel.
            first, last = columns.start // 2, -(-columns.stop // 2)
            pairs[chosen, rows, first:last, 0:2] = luma
            pairs[chosen, rows, first:last, 2:4] = chroma


def _blank_bits(buffer: bytearray, layout: Layout, regions: Sequence[Region], fill: int,
                chosen: list[int] | slice) -> None:
    unpacked = _unpacked_bits(buffer)
    view = _bit_view(unpacked, layout)
    bit = 1 if fill > 0 else 0
    for region in regions:
        clipped = _clipped(region, layout)
        if clipped is not None:
            rows, columns = clipped
            view[chosen, rows, columns, :] = bit
    _repack_bits(buffer, unpacked)


def _widen_pixel_value_range(ds: Dataset, layout: Layout, fill: int) -> None:
    """Keep Smallest/LargestImagePixelValue true when the fill lies outside them (monochrome)."""
    if layout.samples != 1 or layout.bits_allocated == 1:
        return
    low, high = layout.value_range
    value = min(max(fill, low), high)
    smallest, largest = ds.get("SmallestImagePixelValue"), ds.get("LargestImagePixelValue")
    if isinstance(smallest, int) and value < smallest:
        ds.SmallestImagePixelValue = value
    if isinstance(largest, int) and value > largest:
        ds.LargestImagePixelValue = value


def _decoded_frames(ds: Dataset) -> np.ndarray:
    from pydicom.pixels import pixel_array

    _require_pixel_data(ds)
    try:
        array = pixel_array(ds, as_rgb=True)
    except MemoryError:
        raise
    except Exception as exc:
        syntax = UID(_transfer_syntax(ds))
        raise PixelCleaningFailed(
            f"cannot decode the compressed Pixel Data ({syntax.name}: {type(exc).__name__})") from exc
    frames = _positive(ds, "NumberOfFrames", default=1)
    rows, columns = _positive(ds, "Rows"), _positive(ds, "Columns")
    return array.reshape(frames, rows, columns, -1)
