"""Burned-in text found by OCR (the ``tesseract`` program), blanked, and the result read again.

For an instance at risk that no device rule matches (``unmatched = "ocr"``). Every frame is read,
none skipped; identical frames are read once. What tesseract is shown, per frame:

- 8-bit planes as the instance displays: one grey plane (beyond 8 bits stretched between robust
  percentiles; MONOCHROME1 inverted), or red, green and blue (palette through its lookup table,
  YBR converted);
- three pages, each a morphological top-hat (a pixel minus the opening of its neighbourhood:
  thin strokes stay, the slowly varying anatomy behind them goes), taken in every plane and the
  strongest kept: bright strokes in a small and in a larger neighbourhood, dark strokes in a small
  one; thresholded at STROKE_CONTRAST into black strokes on white, upscaled for small letters.
  Global thresholding of the plain frame (tesseract's own) missed text drawn over anatomy on real
  CT and US images; the top-hat finds it, and the contrast floor keeps texture out (a noisy MR
  page went from 20 s to 0.5 s).

All pages go to tesseract as multi-page TIFFs on its standard input (nothing is written to disk),
a few processes in parallel, each bounded by a timeout. ``find_text`` boxes every word with a
letter or digit read with some confidence (FIND_MIN_CONFIDENCE) and any word continuing the
line of a readable one, widened sideways by a letter and joined with its neighbours on the line;
``ocr_clean`` blanks each box with a margin in its own frame and reads every frame again,
repeating while text is found (CLEANING_ROUNDS), and fails the instance (PixelCleaningFailed:
quarantine) if a word is still readable (READABLE_CONFIDENCE_BY_ALNUM) or the OCR fails in any
way. Messages never carry the text that was read.

Known blind spots (text passes unseen): text whose strokes differ from what is around them by
less than STROKE_CONTRAST in every plane; strokes wider than the larger neighbourhood (very
large letters); text tesseract reads below FIND_MIN_CONFIDENCE in every page and that nothing
around it brings out; handwriting-like or rotated text. Those are what device rules are for.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from gateway.errors import PixelCleaningFailed
from gateway.pixels import frames
from gateway.pixels.rules import Region

TESSERACT = "tesseract"
# Page segmentation 11: sparse text, as many words as possible in no particular order.
TESSERACT_ARGS = ("--psm", "11")
# Tesseract's OpenMP threads make a page about twice slower on a small machine; pages run in
# parallel processes instead.
TESSERACT_ENV = {"OMP_THREAD_LIMIT": "1"}
PAGES_PER_CALL = 12
FRAMES_PER_BATCH = 8
TIMEOUT_BASE_S = 30.0
TIMEOUT_PER_PAGE_S = 10.0

# Burned-in fonts are about 8 to 16 pixels high; tesseract reads best with letters twice that.
UPSCALE_UNDER = 2048
UPSCALE = 2
TOPHAT_SMALL = 7
TOPHAT_LARGE = 15
# Burned-in text stands out from what is around it by at least this much (of 255); fainter
# texture (noise, anatomy) is left white, which also keeps tesseract fast.
STROKE_CONTRAST = 48
GREY_PERCENTILES = (0.1, 99.9)

# Confidence tesseract gives what it reads (0-100), measured with pydicom's CT, MR, CR and US
# test images: text drawn into them (or burned in by the device) reads at 85-97 in at least one
# rendering, but a real word over speckle can read in the 50s; the texture of images without
# text gives words of one or two characters up to the low 90s, of three up to the mid 60s, of
# four or more up to the low 50s.
# Blanked: every word with a letter or digit at FIND_MIN_CONFIDENCE or more (lower blanks much
# of a speckled ultrasound image's anatomy; higher leaves real words that read low).
FIND_MIN_CONFIDENCE = 40.0
# Still readable after cleaning (the instance fails): a word with this many letters and digits
# (at least; the last entry holds for longer words) read at this confidence or more. Names, IDs
# and dates are long; a two-character word is noise more often than not.
# Every one is at least FIND_MIN_CONFIDENCE: what is readable is always blanked in the next round.
READABLE_CONFIDENCE_BY_ALNUM = ((2, 95.0), (3, 70.0), (4, 55.0))
# Blanking can bring out text the reading before missed (read as one garbled word with its
# neighbour): what reads as text then is blanked again, up to this many blankings in all, before
# what is still readable fails the instance. Two were not enough for pydicom's US1 image.
CLEANING_ROUNDS = 3
# Two boxes belong to one line of text when their heights differ by at most this ratio, they
# overlap by half the smaller height, and the gap between them is at most this many heights.
LINE_HEIGHT_RATIO = 1.5
LINE_GAP_IN_HEIGHTS = 1.0
# A letter is about this many heights wide (see _widened_sideways).
WORD_REACH_IN_HEIGHTS = 0.6


@dataclass(frozen=True)
class Word:
    """One word tesseract read: where (frame index from 0, box in image pixels) and how surely."""

    frame: int
    box: Region
    text: str
    confidence: float

    @property
    def alnum(self) -> int:
        return sum(ch.isalnum() for ch in self.text)

    def text_like(self) -> bool:
        """Worth blanking: a letter or digit, read with some confidence."""
        return self.alnum >= 1 and self.confidence >= FIND_MIN_CONFIDENCE

    def readable(self) -> bool:
        """Text a reader would take for text: what must not survive cleaning."""
        needed = None
        for alnum, confidence in READABLE_CONFIDENCE_BY_ALNUM:
            if self.alnum >= alnum:
                needed = confidence
        return needed is not None and self.confidence >= needed


def find_text(ds: Dataset) -> list[tuple[int, Region]]:
    """Boxes of what reads as text, as (frame index from 0, box in image pixels), sorted: every
    text-like word (``Word.text_like``) and any word that continues the line of a readable one,
    a letter's width wider each side, neighbours on a line joined. Raises PixelCleaningFailed
    when the OCR or the pixels fail."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    return [(frame, _widened(box, 0, rows, columns)) for frame, box in _text_boxes(read_words(ds))]


def ocr_clean(ds: Dataset, fill: int, margin: int = 4) -> Dataset:
    """Blank every box ``find_text`` finds, widened by ``margin`` pixels, to ``fill`` in its own
    frame (pixels elsewhere unchanged), then read every frame again; while something is still
    readable, what reads as text is blanked and read again (``CLEANING_ROUNDS`` in all).
    Modifies ``ds`` and returns it (compressed pixels come out decoded, see frames.blank).
    Raises PixelCleaningFailed when text is still readable at the end, or the OCR or the
    pixels fail."""
    words = read_words(ds)
    for _ in range(CLEANING_ROUNDS):
        boxes = _text_boxes(words)
        if not boxes:
            # Reading again would see the same pixels the same way: nothing to read.
            return ds
        _blank_boxes(ds, boxes, fill, margin)
        words = read_words(ds)
        if not any(word.readable() for word in words):
            return ds
    remaining = [word for word in words if word.readable()]
    frame_count = len({word.frame for word in remaining})
    raise PixelCleaningFailed(f"text still readable after cleaning ({len(remaining)} words in "
                              f"{frame_count} frames)")


def read_words(ds: Dataset) -> list[Word]:
    """Every word tesseract reads in any frame, in any rendering (see the module text)."""
    pixels = frames.frames_of(ds)
    photometric = frames.frames_photometric(ds)
    bits_stored = int(ds.get("BitsStored", 8) or 8)

    def shown(index: int) -> np.ndarray:
        return _planes(pixels[index], photometric, bits_stored, ds)

    copies: dict[int, list[int]] = {}
    first_seen: dict[bytes, int] = {}
    for index in range(pixels.shape[0]):
        digest = hashlib.blake2b(shown(index).tobytes(), digest_size=16).digest()
        copies.setdefault(first_seen.setdefault(digest, index), []).append(index)
    scale = UPSCALE if max(pixels.shape[1:3]) < UPSCALE_UNDER else 1
    distinct = sorted(copies)
    words: list[Word] = []
    # A batch of frames at a time: the pages of a long cine would not fit in memory at once.
    batch = FRAMES_PER_BATCH * (os.cpu_count() or 1)
    for start in range(0, len(distinct), batch):
        pages = [(index, page) for index in distinct[start:start + batch]
                 for page in _renderings(shown(index), scale)]
        for index, text, confidence, box in _ocr_pages(pages):
            image_box = _unscaled(box, scale, pixels.shape[1], pixels.shape[2])
            if image_box is not None:
                words.extend(Word(frame, image_box, text, confidence) for frame in copies[index])
    return words


def _text_boxes(words: Iterable[Word]) -> list[tuple[int, Region]]:
    """Per frame: the boxes of text-like words, and of any word with a letter or digit that
    continues the line of a readable one (over anatomy part of a date reads well, part badly),
    widened and joined along their lines."""
    text_like: dict[int, set[Region]] = {}
    readable: dict[int, set[Region]] = {}
    other: dict[int, set[Region]] = {}
    for word in words:
        if word.alnum >= 1:
            chosen = text_like if word.text_like() else other
            chosen.setdefault(word.frame, set()).add(_widened_sideways(word.box))
        if word.readable():
            readable.setdefault(word.frame, set()).add(_widened_sideways(word.box))
    boxes: list[tuple[int, Region]] = []
    for frame in sorted(text_like):
        anchors = readable.get(frame, set())
        continuing = {box for box in other.get(frame, set())
                      if any(_same_line_near(box, anchor) for anchor in anchors)}
        boxes.extend((frame, box) for box in _joined_along_lines(text_like[frame] | continuing))
    return boxes


def _widened_sideways(box: Region) -> Region:
    """Tesseract's word box can leave out a first or last letter it could not read (seen with a
    drawn date): reach a letter's width further each side."""
    reach = int(np.ceil(box.height * WORD_REACH_IN_HEIGHTS))
    left = max(box.x - reach, 0)
    return Region(left, box.y, box.x + box.width + reach - left, box.height)


def _joined_along_lines(boxes: Iterable[Region]) -> list[Region]:
    """Boxes on one line of text with a gap narrower than a letter joined into one: a word read
    as two garbled pieces leaves its middle readable otherwise (seen with a drawn date)."""
    pending = sorted(boxes, key=_box_order)
    while (pair := _first_pair_on_a_line(pending)) is not None:
        first, second = pair
        merged = _union(pending[first], pending[second])
        pending = sorted([box for k, box in enumerate(pending) if k not in pair] + [merged], key=_box_order)
    return pending


def _first_pair_on_a_line(boxes: Sequence[Region]) -> tuple[int, int] | None:
    for first in range(len(boxes)):
        for second in range(first + 1, len(boxes)):
            if _same_line_near(boxes[first], boxes[second]):
                return first, second
    return None


def _same_line_near(a: Region, b: Region) -> bool:
    low, high = sorted((a.height, b.height))
    if high > LINE_HEIGHT_RATIO * low:
        return False
    overlap = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    gap = max(a.x, b.x) - min(a.x + a.width, b.x + b.width)
    return overlap >= low / 2 and gap <= high * LINE_GAP_IN_HEIGHTS


def _union(a: Region, b: Region) -> Region:
    left, top = min(a.x, b.x), min(a.y, b.y)
    right, bottom = max(a.x + a.width, b.x + b.width), max(a.y + a.height, b.y + b.height)
    return Region(left, top, right - left, bottom - top)


def _box_order(box: Region) -> tuple[int, int, int, int]:
    return box.y, box.x, box.height, box.width


def _blank_boxes(ds: Dataset, boxes: Iterable[tuple[int, Region]], fill: int, margin: int) -> None:
    rows, columns = int(ds.Rows), int(ds.Columns)
    by_frame: dict[int, set[Region]] = {}
    for frame, box in boxes:
        by_frame.setdefault(frame, set()).add(_widened(box, margin, rows, columns))
    for regions, in_frames in _frames_by_regions(by_frame):
        frames.blank(ds, regions, fill, in_frames=in_frames)


def _planes(frame: np.ndarray, photometric: str, bits_stored: int, ds: Dataset) -> np.ndarray:
    """One frame (rows, columns, samples) as 8-bit planes (rows, columns, planes), light as the
    instance displays it: one grey plane, or red, green and blue (text differs from what is
    around it in at least one of them even when not in brightness, as white on yellow)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        colours = np.asarray(apply_color_lut(frame[..., 0], ds))
        # 16-bit table entries onto 8 bits by a fixed factor: the same colour always the same grey.
        frame = colours // 257 if colours.dtype.itemsize > 1 else colours
        bits_stored = 8
    elif photometric.startswith("YBR") and frame.shape[-1] == 3:
        from pydicom.pixels import convert_color_space

        frame = np.asarray(convert_color_space(frame, "YBR_FULL", "RGB"))
    values = frame.reshape(frame.shape[0], frame.shape[1], -1).astype(np.float64)
    if bits_stored == 1:
        planes = (values > 0).astype(np.uint8) * 255
    elif bits_stored <= 8 and values.min() >= 0:
        planes = np.clip(values, 0, 255).astype(np.uint8)
    else:
        planes = _stretched(values)
    return 255 - planes if photometric == "MONOCHROME1" else planes


def _stretched(values: np.ndarray) -> np.ndarray:
    """Values beyond 8 bits onto 0..255 between robust percentiles: a few extreme pixels must not
    squeeze everything else (text included) into a handful of grey levels."""
    low, high = np.percentile(values, GREY_PERCENTILES)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)


def _renderings(planes: np.ndarray, scale: int) -> list[Image.Image]:
    """The pictures tesseract reads for one frame: dark strokes on white (see the module text);
    a stroke is what stands out in any plane."""
    bright_small, bright_large, dark_small = (
        np.max([_tophat(plane, size) for plane in chosen], axis=0)
        for chosen, size in (
            (_planes_of(planes), TOPHAT_SMALL),
            (_planes_of(planes), TOPHAT_LARGE),
            (_planes_of(255 - planes), TOPHAT_SMALL)))
    pages = []
    for stroke in (bright_small, bright_large, dark_small):
        page = Image.fromarray(np.clip(stroke, 0, 255).astype(np.uint8))
        if scale > 1:
            page = page.resize((page.width * scale, page.height * scale), Image.Resampling.BICUBIC)
        pages.append(page.point(lambda value: 0 if value >= STROKE_CONTRAST else 255))
    return pages


def _planes_of(planes: np.ndarray) -> list[np.ndarray]:
    return [planes[..., index] for index in range(planes.shape[2])]


def _tophat(grey: np.ndarray, size: int) -> np.ndarray:
    """What is brighter than the opening (erosion, then dilation) over size x size squares."""
    opened = _dilate(_erode(grey, size), size)
    return grey.astype(np.int32) - opened.astype(np.int32)


def _erode(image: np.ndarray, size: int) -> np.ndarray:
    return _square_filter(image, size, np.min)


def _dilate(image: np.ndarray, size: int) -> np.ndarray:
    return _square_filter(image, size, np.max)


def _square_filter(image: np.ndarray, size: int, reduce: np.ufunc | object) -> np.ndarray:
    """Min or max over size x size squares, one axis after the other (a square is separable);
    the edges are repeated outward so the border does not look like a stroke."""
    half = size // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(out, pad, mode="edge"), size, axis=axis)
        out = reduce(windows, axis=-1)  # type: ignore[operator]
    return out


def _ocr_pages(pages: Sequence[tuple[int, Image.Image]]) -> list[tuple[int, str, float, Region]]:
    """(frame index, text, confidence, box in page pixels) of every word on the pages."""
    if not pages:
        return []
    cores = os.cpu_count() or 1
    # Spread over the cores, but start a process (about 0.1 s) for no fewer pages than needed.
    size = max(1, min(PAGES_PER_CALL, -(-len(pages) // cores)))
    calls = [pages[start:start + size] for start in range(0, len(pages), size)]
    with ThreadPoolExecutor(max_workers=min(len(calls), cores)) as pool:
        results = list(pool.map(_ocr_call, calls))
    return [word for result in results for word in result]


def _ocr_call(pages: Sequence[tuple[int, Image.Image]]) -> list[tuple[int, str, float, Region]]:
    """One tesseract process for a few pages, sent as one multi-page TIFF on its standard input."""
    tiff = io.BytesIO()
    first, *rest = [page for _, page in pages]
    first.save(tiff, format="TIFF", save_all=True, append_images=rest)
    timeout = TIMEOUT_BASE_S + TIMEOUT_PER_PAGE_S * len(pages)
    command = [TESSERACT, "stdin", "stdout", *TESSERACT_ARGS, "tsv"]
    try:
        done = subprocess.run(command, input=tiff.getvalue(), capture_output=True, timeout=timeout,
                              env={**os.environ, **TESSERACT_ENV}, check=False)
    except FileNotFoundError as exc:
        raise PixelCleaningFailed("OCR unavailable: the tesseract program is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise PixelCleaningFailed(f"OCR did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise PixelCleaningFailed(f"OCR could not start ({type(exc).__name__})") from exc
    if done.returncode != 0:
        raise PixelCleaningFailed(f"OCR failed (tesseract exit status {done.returncode})")
    return [(pages[page - 1][0], text, confidence, box)
            for page, text, confidence, box in _tsv_words(done.stdout, len(pages))]


def _tsv_words(output: bytes, page_count: int) -> Iterable[tuple[int, str, float, Region]]:
    """(page number from 1, text, confidence, box) of each word in tesseract's TSV output."""
    lines = output.decode("utf-8", errors="replace").splitlines()
    if not lines or not lines[0].startswith("level\t"):
        raise PixelCleaningFailed("OCR gave no readable result (tesseract TSV header missing)")
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != 12 or fields[0] != "5" or not fields[11].strip():
            continue
        try:
            page = int(fields[1])
            left, top, width, height = (int(value) for value in fields[6:10])
            confidence = float(fields[10])
        except ValueError as exc:
            raise PixelCleaningFailed("OCR gave no readable result (malformed TSV line)") from exc
        if not 1 <= page <= page_count:
            raise PixelCleaningFailed("OCR gave no readable result (page number out of range)")
        yield page, fields[11].strip(), confidence, Region(left, top, width, height)


def _unscaled(box: Region, scale: int, rows: int, columns: int) -> Region | None:
    """A box on an upscaled page as the image pixels it covers (rounded outward, clipped)."""
    left, top = box.x // scale, box.y // scale
    right = min(-(-(box.x + box.width) // scale), columns)
    bottom = min(-(-(box.y + box.height) // scale), rows)
    if right <= left or bottom <= top:
        return None
    return Region(left, top, right - left, bottom - top)


def _widened(box: Region, margin: int, rows: int, columns: int) -> Region:
    left, top = max(box.x - margin, 0), max(box.y - margin, 0)
    right = min(box.x + box.width + margin, columns)
    bottom = min(box.y + box.height + margin, rows)
    return Region(left, top, right - left, bottom - top)


def _frames_by_regions(by_frame: dict[int, set[Region]]) -> list[tuple[list[Region], list[int]]]:
    """Frames that need the same regions blanked, together: one pass over the pixels each (text
    that stays put in a cine is one pass, not one per frame)."""
    grouped: dict[frozenset[Region], list[int]] = {}
    for frame, regions in sorted(by_frame.items()):
        grouped.setdefault(frozenset(regions), []).append(frame)
    return [(sorted(regions, key=lambda r: (r.y, r.x, r.height, r.width)), in_frames)
            for regions, in_frames in grouped.items()]
