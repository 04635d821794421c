"""OCR cleaning of burned-in text (gateway/pixels/ocr.py): real pydicom images with text drawn
into their pixels (and the text real ultrasound images carry), read by tesseract before and after."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from gateway.errors import PixelCleaningFailed
from gateway.pixels import frames, ocr

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="the tesseract program is not installed (Debian package tesseract-ocr)")

FONT_FILE = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
PATIENT_LINES = ("DOE JOHN 1234567", "ST MARY HOSPITAL", "2001-03-04")
PATIENT_TOKENS = ("DOE", "JOHN", "1234567", "MARY", "HOSPITAL", "2001-03-04")
Text = tuple[int, int, str]  # x, y, text


def load(name: str) -> Dataset:
    return pydicom.dcmread(str(get_testdata_file(name)))


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT_FILE.exists():
        return ImageFont.truetype(str(FONT_FILE), size)
    return ImageFont.load_default(size)


def draw_text(ds: Dataset, texts: Sequence[Text], value: Sequence[int], size: int = 14,
              frame: int | None = None) -> np.ndarray:
    """Burn ``texts`` into the pixels (every frame, or one) with the sample values ``value``;
    returns the mask of the text's pixels (rows, columns)."""
    pixels = frames.frames_of(ds)
    canvas = Image.new("L", (pixels.shape[2], pixels.shape[1]), 0)
    pen = ImageDraw.Draw(canvas)
    for x, y, text in texts:
        pen.text((x, y), text, fill=255, font=font(size))
    mask = np.asarray(canvas) > 127
    chosen = slice(None) if frame is None else slice(frame, frame + 1)
    pixels[chosen][:, mask, :] = np.asarray(value, dtype=pixels.dtype)
    frames.with_frames(ds, pixels)
    return mask


def texts_read(ds: Dataset, frame: int | None = None) -> list[str]:
    return [word.text for word in ocr.read_words(ds) if frame is None or word.frame == frame]


def tokens_in(texts: Sequence[str], tokens: Sequence[str]) -> set[str]:
    return {token for token in tokens if any(token in text for text in texts)}


def near(mask: np.ndarray, distance: int) -> np.ndarray:
    """The mask grown by ``distance`` pixels in every direction."""
    rows, columns = np.nonzero(mask)
    grown = np.zeros_like(mask)
    for row, column in zip(rows, columns, strict=True):
        top, left = max(row - distance, 0), max(column - distance, 0)
        grown[top:row + distance + 1, left:column + distance + 1] = True
    return grown


def patient_text_on(ds: Dataset, size: int = 14) -> list[Text]:
    rows, columns = int(ds.Rows), int(ds.Columns)
    return [(10, rows // 3, PATIENT_LINES[0]), (columns // 3, rows // 2, PATIENT_LINES[1]),
            (columns // 4, rows - 2 * size - 10, PATIENT_LINES[2])]


@needs_tesseract
def test_grey_ct_text_drawn_over_anatomy_is_read_then_removed_locally() -> None:
    ds = load("693_UNCR.dcm")  # CT 512 x 512, signed 16-bit
    before = frames.frames_of(ds)
    brightest = int(before.max())
    mask = draw_text(ds, patient_text_on(ds), [brightest])
    drawn = frames.frames_of(ds)

    assert tokens_in(texts_read(ds), PATIENT_TOKENS) >= {"JOHN", "1234567", "HOSPITAL"}

    ocr.ocr_clean(ds, fill=0)

    after = frames.frames_of(ds)
    assert tokens_in(texts_read(ds), PATIENT_TOKENS) == set()
    assert not (after[0, mask, 0] == brightest).any(), "a pixel of the drawn text survived"
    # Away from the text at most a stray box where the anatomy's texture reads like a word.
    far_from_text = ~near(mask, 40)
    changed_far = (after[0, far_from_text] != drawn[0, far_from_text]).mean()
    assert changed_far < 0.005
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


@needs_tesseract
def test_rgb_ultrasound_real_and_drawn_text_is_removed() -> None:
    ds = load("US1_UNCR.dcm")  # US 640 x 480 RGB with the device's own burned-in text
    mask = draw_text(ds, [(30, 400, "DOE JOHN 1234567")], [255, 255, 0])  # yellow, in the black
    drawn = frames.frames_of(ds)
    assert tokens_in(texts_read(ds), ("BAPTIST", "LYMPH", "JOHN", "1234567")) == {
        "BAPTIST", "LYMPH", "JOHN", "1234567"}

    ocr.ocr_clean(ds, fill=0)

    after = frames.frames_of(ds)
    assert tokens_in(texts_read(ds), PATIENT_TOKENS + ("BAPTIST", "LYMPH", "NODE")) == set()
    assert (after[0, mask] == 0).all()
    changed = (after != drawn).any(axis=(0, 3))
    assert changed.mean() < 0.3, "cleaning must be local to what reads as text, not the whole frame"
    # The black band right of the drawn line and above the device's bottom line holds no text.
    assert np.array_equal(after[0, 420:450, 300:], drawn[0, 420:450, 300:])


@needs_tesseract
def test_palette_colour_device_text_is_removed() -> None:
    ds = load("OBXXXX1A.dcm")  # US 800 x 600 PALETTE COLOR with the device's text
    device_tokens = ("PHILIPS", "5/25/2011", "Healthcare")
    assert tokens_in(texts_read(ds), device_tokens) == set(device_tokens)
    original = frames.frames_of(ds)

    ocr.ocr_clean(ds, fill=0)

    assert tokens_in(texts_read(ds), device_tokens) == set()
    after = frames.frames_of(ds)
    # The image sector (lower middle) has no text: its indices are untouched.
    assert np.array_equal(after[0, 300:560, 200:700], original[0, 300:560, 200:700])


@needs_tesseract
def test_multi_frame_each_frame_cleaned_where_its_own_text_is() -> None:
    ds = load("SC_rgb_rle_2frame.dcm")  # RLE, RGB 100 x 100, 2 frames
    original = frames.frames_of(ds)
    name_mask = draw_text(ds, [(4, 6, "DOE JOHN")], [255, 255, 255], size=13, frame=0)
    id_mask = draw_text(ds, [(4, 70, "1234567")], [255, 255, 255], size=13, frame=1)
    assert tokens_in(texts_read(ds, frame=0), ("DOE", "JOHN")) == {"DOE", "JOHN"}
    assert tokens_in(texts_read(ds, frame=1), ("1234567",)) == {"1234567"}

    ocr.ocr_clean(ds, fill=0)

    after = frames.frames_of(ds)
    assert tokens_in(texts_read(ds), ("DOE", "JOHN", "1234567")) == set()
    assert (after[0, name_mask] == 0).all() and (after[1, id_mask] == 0).all()
    # Frame 1 keeps its pixels where frame 0 had its text, and frame 0 where frame 1 had its own.
    assert np.array_equal(after[1, name_mask], original[1, name_mask])
    assert np.array_equal(after[0, id_mask], original[0, id_mask])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


@needs_tesseract
def test_find_text_gives_frame_and_box_of_each_line() -> None:
    ds = load("SC_rgb_2frame.dcm")  # native RGB 100 x 100, 2 frames
    mask = draw_text(ds, [(4, 40, "1234567")], [255, 255, 255], size=13, frame=1)

    boxes = ocr.find_text(ds)

    assert {frame for frame, _ in boxes} == {1}
    rows, columns = np.nonzero(mask)
    covering = [box for _, box in boxes
                if box.x <= columns.min() and box.x + box.width > columns.max()
                and box.y <= rows.min() and box.y + box.height > rows.max()]
    assert covering, f"no box covers the drawn number: {boxes}"


@needs_tesseract
def test_image_without_text_passes_unchanged() -> None:
    ds = load("SC_rgb.dcm")
    data = ds.PixelData

    assert ocr.find_text(ds) == []
    assert ocr.ocr_clean(ds, fill=0).PixelData == data


@needs_tesseract
def test_text_left_readable_fails_without_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load("SC_rgb.dcm")
    draw_text(ds, [(4, 40, "1234567")], [255, 255, 255], size=13)
    monkeypatch.setattr(frames, "blank", lambda ds, regions, fill, in_frames=None: ds)  # a blank that misses

    with pytest.raises(PixelCleaningFailed, match="text still readable after cleaning") as failure:
        ocr.ocr_clean(ds, fill=0)
    assert "1234567" not in str(failure.value)
    assert failure.value.reason == "pixel-cleaning-failed"


def test_missing_tesseract_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    ds = load("SC_rgb.dcm")

    with pytest.raises(PixelCleaningFailed, match="tesseract program is not installed"):
        ocr.ocr_clean(ds, fill=0)
    with pytest.raises(PixelCleaningFailed):
        ocr.find_text(ds)


def fake_tesseract(tmp_path: Path, script: str) -> str:
    program = tmp_path / "tesseract"
    program.write_text("#!/bin/sh\n" + script + "\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return str(program)


@pytest.mark.parametrize(("script", "message"), [
    ("exec sleep 10", "did not finish"),
    ("exit 3", "exit status 3"),
    ("echo garbage", "no readable result"),
    ("printf 'level\\tpage_num\\n5\\t1\\t1\\t1\\t1\\t1\\tx\\t0\\t9\\t9\\t96\\tA1\\n'", "malformed"),
])
def test_ocr_that_hangs_fails_or_talks_nonsense_fails_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, message: str) -> None:
    monkeypatch.setattr(ocr, "TESSERACT", fake_tesseract(tmp_path, script))
    monkeypatch.setattr(ocr, "TIMEOUT_BASE_S", 0.5)
    monkeypatch.setattr(ocr, "TIMEOUT_PER_PAGE_S", 0.0)

    with pytest.raises(PixelCleaningFailed, match=message):
        ocr.ocr_clean(load("SC_rgb.dcm"), fill=0)
