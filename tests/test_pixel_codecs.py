"""Burned-in text in every kind of pixel data: real pydicom images (grey and colour, one and
several frames) with a patient's name drawn into a banner, stored native, RLE, JPEG baseline,
JPEG-LS and JPEG 2000. A rule blanks the banner; OCR reads the text in each input and none of it
in the output, and every pixel outside the banner is the input's, decoded."""

from __future__ import annotations

import shutil
from io import BytesIO

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from gateway.deid.engine import Policy
from gateway.deid.profile import build_profile
from gateway.deidentify import deidentify_bytes
from gateway.pixels import ocr
from gateway.pixels.policy import PixelPolicy
from gateway.pixels.rules import parse_rules

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="the tesseract program is not installed (Debian tesseract-ocr)")

SECRET = b"pixel-codecs-secret-0123456789abcdef"
POLICY = Policy(profile=build_profile(), quarantine_burned_in_annotation=False)
BANNER = 48  # rows at the top the rule blanks
TOKENS = ("DOE", "JOHN", "1234567")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT, 22)
    except OSError:
        return ImageFont.load_default(22)


def with_banner_text(name: str, frames: int) -> Dataset:
    """The image (repeated to ``frames`` frames) with "DOE JOHN 1234567" in its top banner of
    every frame, in the image's brightest value, marked BurnedInAnnotation YES."""
    ds = pydicom.dcmread(get_testdata_file(name))
    pixels = ds.pixel_array
    canvas = Image.new("L", (int(ds.Columns), int(ds.Rows)), 0)
    ImageDraw.Draw(canvas).text((12, 12), " ".join(TOKENS), fill=255, font=font())
    mask = np.asarray(canvas) > 127
    pixels = pixels.copy()
    pixels[:BANNER] = pixels.min()  # a dark banner, as modalities draw it (US1 has its own text there)
    pixels[mask] = pixels.max()
    stack = np.stack([pixels] * frames)
    ds.PixelData = stack.tobytes()
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BurnedInAnnotation = "YES"
    return ds


def encoded(ds: Dataset, syntax: str | None) -> bytes:
    if syntax == JPEGBaseline8Bit:  # no DICOM encoder here for it: Pillow's, 4:2:2 YCbCr
        frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns), 3)
        jpegs = []
        for frame in frames:
            buffer = BytesIO()
            Image.fromarray(frame, "RGB").save(buffer, "JPEG", quality=95, subsampling=1)
            jpegs.append(buffer.getvalue())
        ds.PixelData = encapsulate(jpegs)
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    elif syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rule_for(ds: Dataset) -> PixelPolicy:
    text = (f'[[rules]]\nname = "banner"\nmatch = {{ Rows = {ds.Rows}, Columns = {ds.Columns} }}\n'
            f"regions = [[0, 0, {ds.Columns}, {BANNER}]]\n")
    return PixelPolicy(rules=parse_rules(text, "test"), unmatched="quarantine", fill=0)


def read(ds: Dataset) -> set[str]:
    texts = [word.text for word in ocr.read_words(ds)]
    return {token for token in TOKENS if any(token in text for text in texts)}


CASES = [
    ("693_UNCR.dcm", 1, None), ("US1_UNCR.dcm", 1, None),
    ("693_UNCR.dcm", 2, RLELossless), ("US1_UNCR.dcm", 1, RLELossless),
    ("US1_UNCR.dcm", 2, JPEGBaseline8Bit),
    ("693_UNCR.dcm", 1, JPEGLSLossless), ("US1_UNCR.dcm", 1, JPEGLSLossless),
    ("693_UNCR.dcm", 1, JPEG2000Lossless), ("US1_UNCR.dcm", 2, JPEG2000Lossless),
]


@pytest.mark.parametrize(("name", "frames", "syntax"), CASES,
                         ids=[f"{n[:-4]}-{f}f-{getattr(s, 'name', 'native')}" for n, f, s in CASES])
def test_a_rule_removes_the_drawn_text_in_every_frame_of_every_codec(name, frames, syntax):
    data = encoded(with_banner_text(name, frames), syntax)
    source = pydicom.dcmread(BytesIO(data))
    assert read(source), "OCR reads the drawn text in the input"
    clean = deidentify_bytes(data, POLICY, SECRET, rule_for(source))
    out = pydicom.dcmread(BytesIO(clean.data))
    assert read(out) == set(), "none of the text is readable in the output"
    before = source.pixel_array.reshape(frames, int(source.Rows), int(source.Columns), -1)
    after = out.pixel_array.reshape(frames, int(out.Rows), int(out.Columns), -1)
    assert (after[:, :BANNER] == 0).all()
    assert (after[:, BANNER:] == before[:, BANNER:]).all()
    assert out.BurnedInAnnotation == "NO"
