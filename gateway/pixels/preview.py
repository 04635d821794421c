"""A PNG of an instance's first frame with the regions a rule would blank outlined, so an
administrator can check a new rule on a real image before enabling it.

Grey images are shown as a viewer would (modality LUT, then the instance's first window, or the
full range without one; MONOCHROME1 inverted) in 8 bits; colour images as decoded (palette colour
through its lookup table). Nothing is blanked: the text under a region stays visible, to check
that the region covers it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.errors import PixelCleaningFailed
from gateway.pixels.rules import Region

if TYPE_CHECKING:
    import numpy as np

OUTLINE = (255, 0, 0)


def write_preview(ds: Dataset, regions: Sequence[Region], out: Path) -> None:
    """Write ``out`` (PNG, Columns x Rows) showing the first frame with ``regions`` outlined."""
    from PIL import Image, ImageDraw

    frame = _first_frame(ds)
    image = Image.fromarray(_displayable(ds, frame)).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, min(image.size) // 256 + 1)
    for region in regions:
        box = _box_inside(region, image.size)
        if box is not None:
            draw.rectangle(box, outline=OUTLINE, width=width)
    # The frame may show a patient's name: readable by its owner only, from the first byte.
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when the file was there before
    with os.fdopen(descriptor, "wb") as stream:
        image.save(stream, format="PNG")


def _first_frame(ds: Dataset) -> np.ndarray:
    from pydicom.pixels import pixel_array

    if "PixelData" not in ds:
        raise PixelCleaningFailed("the instance has no Pixel Data to preview")
    try:
        return pixel_array(ds, index=0)
    except Exception as exc:  # any decoder failure: the message names only its class
        raise PixelCleaningFailed(f"cannot decode the first frame ({type(exc).__name__})") from exc


def _displayable(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """The frame as 8-bit grey (rows, columns) or 8-bit RGB (rows, columns, 3)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return _to_8_bits(apply_color_lut(frame, ds), _palette_bits(ds))
    if frame.ndim == 3:
        if frame.shape[2] != 3:
            raise PixelCleaningFailed(f"cannot preview {frame.shape[2]} samples per pixel")
        return _to_8_bits(frame, int(ds.get("BitsStored", 8)))
    return _windowed_grey(ds, frame, inverted=photometric == "MONOCHROME1")


def _windowed_grey(ds: Dataset, frame: np.ndarray, inverted: bool) -> np.ndarray:
    import numpy as np
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    low, high = _window(ds) or (float(values.min()), float(values.max()))
    span = max(high - low, 1e-9)
    grey = np.clip((values - low) / span * 255.0, 0, 255).round().astype(np.uint8)
    return 255 - grey if inverted else grey


def _window(ds: Dataset) -> tuple[float, float] | None:
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center - width / 2, center + width / 2


def _first_number(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _palette_bits(ds: Dataset) -> int:
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
    return 8 if bits <= 8 else 16


def _to_8_bits(pixels: np.ndarray, bits: int) -> np.ndarray:
    import numpy as np

    if pixels.dtype == np.uint8 or bits <= 8:
        return pixels.astype(np.uint8)
    return (pixels.astype(np.uint32) >> (bits - 8)).clip(0, 255).astype(np.uint8)


def _box_inside(region: Region, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The region as an inclusive pixel box clipped to the image, or None when outside it."""
    columns, rows = size
    x1 = min(region.x + region.width, columns) - 1
    y1 = min(region.y + region.height, rows) - 1
    if region.x > x1 or region.y > y1:
        return None
    return region.x, region.y, x1, y1
