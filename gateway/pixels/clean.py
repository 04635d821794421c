"""The pixel stage: burned-in text removed from the pixels of an instance at risk of carrying it.

It runs after the engine, on the de-identified instance, wherever de-identification runs
(receiver threads, anonymize workers, quarantine release). An instance not at risk is not even
decoded: its bytes pass as the engine wrote them. An at-risk one is blanked where its device's
rule says, or where OCR finds text (then read again), or quarantined: never passed with text
that was not removed (unless the administrator chose ``unmatched = "pass"``).
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.errors import BurnedInAnnotation, InstanceError, PixelCleaningFailed
from gateway.pixels import risk
from gateway.pixels.policy import PixelPolicy

CLEAN_PIXEL_DATA = ("113101", "DCM", "Clean Pixel Data Option")


def at_risk(sop_class_uid: str, modality: str, burned_in: str, transfer_syntax: str) -> bool:
    """Whether an instance with these facts needs the pixel stage (cheap: no decoding)."""
    return risk.facts_at_risk(sop_class_uid, modality, burned_in, transfer_syntax)


def clean_pixels(data: bytes, policy: PixelPolicy) -> tuple[bytes, str] | None:
    """See ``_clean_pixels``; anything unexpected on the way is a failure to clean (fail
    closed: quarantine), naming only the error's class."""
    try:
        return _clean_pixels(data, policy)
    except (InstanceError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a codec's or OCR's surprise must not pass the text
        raise PixelCleaningFailed(f"pixel cleaning failed ({type(exc).__name__})") from exc


def _clean_pixels(data: bytes, policy: PixelPolicy) -> tuple[bytes, str] | None:
    """The instance (a Part 10 file) with its burned-in text removed, and its transfer syntax
    (compressed pixels come out decoded); None when it may pass as it is (``unmatched =
    "pass"``). Raises BurnedInAnnotation (no rule; a video or a document) or
    PixelCleaningFailed (undecodable pixels, text still readable, OCR unavailable)."""
    ds: Dataset = dcmread(BytesIO(data))
    reason = risk.always_quarantined(ds)
    if reason is not None:
        raise BurnedInAnnotation(reason)
    rule = policy.rules.match(ds)
    if rule is not None:
        from gateway.pixels import frames  # numpy and the codecs: only for instances at risk

        ds = frames.blank(ds, rule.regions, policy.fill)
    elif policy.unmatched == "ocr":
        from gateway.pixels.ocr import ocr_clean

        ds = ocr_clean(ds, policy.fill)
    elif policy.unmatched == "quarantine":
        from gateway.pixels.rules import missing_rule_hint

        raise BurnedInAnnotation(missing_rule_hint(ds))
    else:
        return None
    _mark_cleaned(ds)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.file_meta.TransferSyntaxUID)


def _mark_cleaned(ds: Dataset) -> None:
    """BurnedInAnnotation NO, and the Clean Pixel Data Option among the methods applied."""
    ds.BurnedInAnnotation = "NO"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = CLEAN_PIXEL_DATA
    codes = ds.get("DeidentificationMethodCodeSequence") or Sequence()
    if not any(getattr(item, "CodeValue", "") == CLEAN_PIXEL_DATA[0] for item in codes):
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    value = ds.get("DeidentificationMethod")
    methods = [str(value)] if isinstance(value, str) else [str(v) for v in value or []]
    if CLEAN_PIXEL_DATA[2] not in methods:
        methods.append(CLEAN_PIXEL_DATA[2])
    ds.DeidentificationMethod = methods
