"""Keyed per-patient date shifting (Retain Longitudinal Temporal Information, Modified Dates).

One shift per patient keeps the intervals between that patient's studies; the shift comes from
the keyed hash, so it is the same on every run and node that shares the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date, timedelta

_DIGITS = re.compile(r"\d+")
OLDEST_KEPT_AGE_YEARS = 89  # HIPAA: ages over 89 are aggregated into one category
AGGREGATED_AGE = "090Y"


def date_shift_days(secret: bytes, patient_key: str, min_days: int, max_days: int) -> int:
    """A shift into the past, between ``min_days`` and ``max_days`` days inclusive."""
    digest = hmac.new(secret, b"dateshift\x00" + patient_key.encode(), hashlib.sha256).digest()
    span = max_days - min_days + 1
    return -(min_days + int.from_bytes(digest[:8], "big") % span)


def _shift_one_date(text: str, days: int) -> str | None:
    text = text.strip()
    if not text:
        return text
    digits = "".join(_DIGITS.findall(text))  # also accepts the retired YYYY.MM.DD form
    if len(digits) != 8:
        return None
    try:
        original = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        shifted = original + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return shifted.strftime("%Y%m%d")


def shift_da(value: str, days: int) -> str | None:
    """Shift a DA value (single date, range ``A-B``, or multi-valued); None if it is not a date."""
    parts = []
    for item in value.split("\\"):
        bounds = item.split("-")
        shifted = [_shift_one_date(b, days) if b.strip() else "" for b in bounds]
        if any(s is None for s in shifted):
            return None
        parts.append("-".join(s or "" for s in shifted))
    return "\\".join(parts)


def _shift_one_datetime(text: str, days: int) -> str | None:
    text = text.strip()
    if len(text) < 8:
        return None  # YYYY or YYYYMM cannot be shifted by days: the caller drops it
    head = _shift_one_date(text[:8], days)
    return None if head is None else head + text[8:]


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT value (time and UTC offset are kept)."""
    parts = []
    for item in value.split("\\"):
        # A DT range is A-B, but an offset is also written with '-': only split on a '-' that
        # is followed by a full date.
        bounds = re.split(r"-(?=\d{8})", item) if item.count("-") else [item]
        shifted = [_shift_one_datetime(b, days) if b.strip() else "" for b in bounds]
        if any(s is None for s in shifted):
            return None
        parts.append("-".join(s or "" for s in shifted))
    return "\\".join(parts)


def aggregate_age(value: str) -> str:
    """Ages above 89 years become 090Y; others are returned unchanged."""
    text = value.strip()
    if len(text) == 4 and text[:3].isdigit() and text[3] == "Y" and int(text[:3]) > OLDEST_KEPT_AGE_YEARS:
        return AGGREGATED_AGE
    return value
