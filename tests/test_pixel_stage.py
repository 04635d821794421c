"""The pixel stage in the de-identify flow: at-risk instances cleaned by their device's rule (or
quarantined), the rest bit for bit as the engine wrote them; the [pixels] settings; anonymize and
quarantine release with rules."""

from __future__ import annotations

import json
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.cli import main
from gateway.deid.engine import Policy
from gateway.deid.profile import build_profile
from gateway.deidentify import deidentify_bytes
from gateway.errors import BurnedInAnnotation, ConfigError
from gateway.pixels.policy import PixelPolicy
from gateway.pixels.rules import parse_rules
from gateway.settings import SECRET_ENV, load_settings

SECRET = b"pixel-stage-secret-0123456789abcdef"
POLICY = Policy(profile=build_profile(), quarantine_burned_in_annotation=False)
US_RULE = """
[[rules]]
name = "GE US banner"
match = { Modality = "US", Manufacturer = "G.E.*", Rows = 480, Columns = 640 }
regions = [[0, 0, 640, 40], [600, 440, 40, 40]]
"""


def file_bytes(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(BytesIO(data)).pixel_array


def rules_policy(text: str = US_RULE, unmatched: str = "quarantine") -> PixelPolicy:
    return PixelPolicy(rules=parse_rules(text, "test rules"), unmatched=unmatched, fill=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm"])
def test_a_matched_ultrasound_is_blanked_where_its_rule_says_and_nowhere_else(name):
    original = pixels(file_bytes(name))
    clean = deidentify_bytes(file_bytes(name), POLICY, SECRET, rules_policy())
    out = pydicom.dcmread(BytesIO(clean.data))
    cleaned = out.pixel_array
    assert (cleaned[0:40, :, :] == 0).all() and (cleaned[440:480, 600:640, :] == 0).all()
    outside = np.ones(cleaned.shape[:2], dtype=bool)
    outside[0:40, :] = False
    outside[440:480, 600:640] = False
    if name == "US1_UNCR.dcm":  # native: the very same samples elsewhere
        assert (cleaned[outside] == original[outside]).all()
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "Clean Pixel Data Option" in list(out.DeidentificationMethod)
    assert clean.transfer_syntax_uid == str(out.file_meta.TransferSyntaxUID)
    assert out.PatientName != pydicom.dcmread(BytesIO(file_bytes(name))).PatientName


def test_an_instance_not_at_risk_keeps_the_engines_bytes():
    data = file_bytes("CT_small.dcm")
    with_stage = deidentify_bytes(data, POLICY, SECRET, rules_policy())
    without = deidentify_bytes(data, POLICY, SECRET)
    assert with_stage.data == without.data
    assert with_stage.cleaned_pixels is None


def test_a_us_that_says_no_burned_in_annotation_is_not_touched():
    ds = pydicom.dcmread(BytesIO(file_bytes("US1_UNCR.dcm")))
    ds.BurnedInAnnotation = "NO"
    buffer = BytesIO()
    ds.save_as(buffer)
    clean = deidentify_bytes(buffer.getvalue(), POLICY, SECRET, rules_policy(unmatched="quarantine"))
    assert clean.cleaned_pixels is None


def test_an_at_risk_instance_without_a_rule_is_quarantined_with_the_facts_a_rule_needs():
    with pytest.raises(BurnedInAnnotation) as caught:
        deidentify_bytes(file_bytes("OBXXXX1A.dcm"), POLICY, SECRET, rules_policy())
    assert "Modality=US" in str(caught.value) and "Rows=600" in str(caught.value)
    assert "Philips" in str(caught.value)


def test_unmatched_pass_lets_the_instance_through_unchanged():
    data = file_bytes("OBXXXX1A.dcm")
    clean = deidentify_bytes(data, POLICY, SECRET, rules_policy(unmatched="pass"))
    assert clean.cleaned_pixels is None
    assert (pixels(clean.data) == pixels(data)).all()


# --- settings and the commands ---------------------------------------------------------------------


def _config(tmp_path: Path, pixels_section: str) -> Path:
    (tmp_path / "secret.key").write_text("ab" * 32)
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
                      f'secret_file = "{tmp_path / "secret.key"}"\n{pixels_section}\n')
    return config


def test_pixels_settings_name_the_key_and_the_rules_line(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "x"\nmatch = {}\nregions = [[0, 0, 1, 1]]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, f'[pixels]\nrules_file = "{rules}"'))
    assert str(caught.value).startswith("pixels.rules_file: ")
    assert "line 3" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^pixels.unmatched: 'blur' is not one of"):
        load_settings(_config(tmp_path, '[pixels]\nunmatched = "blur"'))


def test_with_pixels_burned_in_annotation_yes_is_cleaned_not_quarantined(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    rules = tmp_path / "rules.toml"
    rules.write_text(US_RULE)
    settings = load_settings(_config(tmp_path, f'[pixels]\nrules_file = "{rules}"'))
    assert settings.policy().quarantine_burned_in_annotation is False
    ds = pydicom.dcmread(BytesIO(file_bytes("US1_UNCR.dcm")))
    ds.BurnedInAnnotation = "YES"
    buffer = BytesIO()
    ds.save_as(buffer)
    clean = deidentify_bytes(buffer.getvalue(), settings.policy(), SECRET, settings.pixel_policy())
    assert pydicom.dcmread(BytesIO(clean.data)).BurnedInAnnotation == "NO"
    without = load_settings(_config(tmp_path, ""))
    assert without.policy().quarantine_burned_in_annotation is True  # the old meaning
    assert without.pixel_policy() is None


def test_anonymize_cleans_quarantines_and_a_release_after_a_new_rule_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in ("US1_UNCR.dcm", "OBXXXX1A.dcm", "CT_small.dcm"):
        (src / name).write_bytes(file_bytes(name))
    rules = tmp_path / "rules.toml"
    rules.write_text(US_RULE)
    config = _config(tmp_path, f'[pixels]\nrules_file = "{rules}"')
    assert main(["anonymize", "--config", str(config), "--json", str(src), str(dst)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["written"], summary["quarantined"]) == (2, 1)
    assert summary["quarantine_reasons"] == {"burned-in-annotation": 1}

    # The administrator adds a rule for the Philips layout and releases the entry.
    rules.write_text(US_RULE + '\n[[rules]]\nname = "Philips US"\n'
                     'match = { Modality = "US", Manufacturer = "Philips*", Rows = 600, Columns = 800 }\n'
                     'regions = [[0, 0, 800, 60]]\n')
    assert main(["quarantine", "release", "--config", str(config), "--all"]) == 0
    outputs = sorted(dst.rglob("*.dcm"))
    assert len(outputs) == 3
    released = [pydicom.dcmread(p) for p in outputs if pydicom.dcmread(p).Rows == 600]
    assert len(released) == 1 and released[0].BurnedInAnnotation == "NO"


def test_preview_writes_the_first_frame_with_the_rule_and_says_which(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    rules = tmp_path / "rules.toml"
    rules.write_text(US_RULE)
    config = _config(tmp_path, f'[pixels]\nrules_file = "{rules}"')
    out = tmp_path / "preview.png"
    assert main(["pixel-rules", "preview", "--config", str(config), str(get_testdata_file("US1_UNCR.dcm")),
                 "--out", str(out)]) == 0
    assert "GE US banner" in capsys.readouterr().out
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (640, 480)
    assert main(["pixel-rules", "preview", "--config", str(config), str(get_testdata_file("OBXXXX1A.dcm")),
                 "--out", str(tmp_path / "none.png")]) == 1
    assert "no pixel rule for" in capsys.readouterr().out


def test_pixels_that_cannot_be_decoded_are_quarantined_not_passed():
    ds = pydicom.dcmread(BytesIO(file_bytes("US1_J2KR.dcm")))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frame[:64] + b"\x00" * (len(frame) - 64)])
    buffer = BytesIO()
    ds.save_as(buffer)
    from gateway.errors import PixelCleaningFailed

    with pytest.raises(PixelCleaningFailed):
        deidentify_bytes(buffer.getvalue(), POLICY, SECRET, rules_policy())


def test_unmatched_ocr_cleans_an_instance_no_rule_knows_and_the_text_is_gone():
    from test_pixel_ocr import PATIENT_TOKENS, draw_text, patient_text_on, texts_read, tokens_in

    if shutil.which("tesseract") is None:
        pytest.skip("the tesseract program is not installed (Debian package tesseract-ocr)")
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    ds.BurnedInAnnotation = "YES"  # a CT that says so: at risk
    draw_text(ds, patient_text_on(ds), [int(ds.pixel_array.max())])
    assert tokens_in(texts_read(ds), PATIENT_TOKENS)  # the text is there to be found
    buffer = BytesIO()
    ds.save_as(buffer)
    clean = deidentify_bytes(buffer.getvalue(), POLICY, SECRET, rules_policy(unmatched="ocr"))
    out = pydicom.dcmread(BytesIO(clean.data))
    assert tokens_in(texts_read(out), PATIENT_TOKENS) == set()
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_an_encapsulated_pdf_is_quarantined_when_pixels_are_cleaned():
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in range(3))
    ds.Modality, ds.PatientName, ds.PatientID = "DOC", "Doe^John", "PID-1"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4 Doe John 1234567 %%EOF\n"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(BurnedInAnnotation):
        deidentify_bytes(buffer.getvalue(), POLICY, SECRET, rules_policy(unmatched="pass"))
