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


# --- times (Retain Longitudinal, Modified Dates: times move too) -------------------------------

SECONDS_PER_DAY = 86400
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_DT_OFFSET = re.compile(r"[+-]\d{4}$")


def time_shift_seconds(secret: bytes, patient_key: str) -> int:
    """A keyed shift of the time of day, 0 to 86399 s, the same for all of a patient's times.

    Times left as they were would pin down the original moment of each acquisition (a way back
    through the modality's or the RIS's logs), while dates move by whole days.
    """
    digest = hmac.new(secret, b"timeshift\x00" + patient_key.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % SECONDS_PER_DAY


def _shift_one_time(text: str, seconds: int) -> tuple[str, int] | None:
    """(shifted HHMMSS[.F], days carried over midnight) for one TM value; None if unreadable."""
    text = text.strip()
    if not text:
        return text, 0
    match = _TM.fullmatch(text.replace(":", ""))
    if match is None:
        return None
    hours, minutes, secs = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    if hours > 23 or minutes > 59 or secs > 60:
        return None
    total = hours * 3600 + minutes * 60 + min(secs, 59) + seconds
    carried, total = divmod(total, SECONDS_PER_DAY)
    hh, rest = divmod(total, 3600)
    mm, ss = divmod(rest, 60)
    return f"{hh:02d}{mm:02d}{ss:02d}{match[4] or ''}", carried


def time_carry(value: str, seconds: int) -> int:
    """Days that ``seconds`` carry the first time of ``value`` over midnight (0 or 1)."""
    shifted = _shift_one_time(value.split("\\")[0].split("-")[0], seconds)
    return 0 if shifted is None else shifted[1]


def shift_tm(value: str, seconds: int) -> str | None:
    """Shift a TM value (single, range or multi-valued) by ``seconds`` within the day."""
    parts = []
    for item in value.split("\\"):
        bounds = [_shift_one_time(b, seconds) if b.strip() else ("", 0) for b in item.split("-")]
        if any(b is None for b in bounds):
            return None
        parts.append("-".join(b[0] for b in bounds if b is not None))
    return "\\".join(parts)


def _shift_one_moment(text: str, days: int, seconds: int) -> str | None:
    """A DT value moved by ``days`` and ``seconds``; its UTC offset dropped (a place)."""
    text = _DT_OFFSET.sub("", text.strip())
    if len(text) < 8:
        return None
    date_part = _shift_one_date(text[:8], days)
    if date_part is None:
        return None
    if len(text) == 8:
        return date_part
    time_part = _shift_one_time(text[8:], seconds)
    if time_part is None:
        return None
    if time_part[1]:
        date_part = _shift_one_date(date_part, time_part[1])
        if date_part is None:
            return None
    return date_part + time_part[0]


def shift_moment(value: str, days: int, seconds: int) -> str | None:
    """Shift a DT value (single, range or multi-valued) by days and seconds together."""
    parts = []
    for item in value.split("\\"):
        bounds = re.split(r"-(?=\d{8})", item) if item.count("-") else [item]
        shifted = [_shift_one_moment(b, days, seconds) if b.strip() else "" for b in bounds]
        if any(s is None for s in shifted):
            return None
        parts.append("-".join(s or "" for s in shifted))
    return "\\".join(parts)
