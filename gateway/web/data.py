"""What the console shows, gathered from the same places as the command line: ``status`` for
the numbers, the quarantine folder for the lists. List rows carry no patient data: the time,
reason, where it came from, SOP class and modality, read from the kept instance."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydicom.uid import UID

from gateway.deid.elements import read_encoded
from gateway.deid.engine import MODALITY, SOP_CLASS_UID
from gateway.errors import GatewayError
from gateway.quarantine import Quarantine, QuarantineRecord

MAX_LIST_ROWS = 500  # a page shows the newest ones
CHART_MINUTES = 30


@dataclass(frozen=True)
class ListRow:
    id: str
    time: str
    reason: str
    calling_ae: str
    sop_class: str
    modality: str
    destination: str
    message: str  # names elements and classes, never values


def calling_ae(source: str) -> str:
    """The sender's AE title from a network source "AE@host:port" ("" for other sources)."""
    ae, at, _ = source.rpartition("@")
    return ae if at else ""


@lru_cache(maxsize=4096)
def _instance_facts(path: str, size: int) -> tuple[str, str]:
    """SOP class (its name when known) and modality of a kept instance (cached by file)."""
    try:
        with open(path, "rb") as handle:
            instance = read_encoded(handle.read())
        uid = instance.text(SOP_CLASS_UID) or instance.media_sop_class
        return (UID(uid).name if uid else ""), instance.text(MODALITY)
    except (OSError, GatewayError, ValueError):
        return "", ""


def list_rows(quarantine: Quarantine, dead_letters: bool, reason: str = "") -> list[ListRow]:
    """Originals (``dead_letters`` False) or dead letters, newest first, at most MAX_LIST_ROWS."""
    records = [r for r in quarantine.list()
               if bool(r.context.get("dead_letter")) == dead_letters and (not reason or
                                                                      r.reason == reason)]
    records.sort(key=lambda r: r.time, reverse=True)
    return [_row(quarantine, r) for r in records[:MAX_LIST_ROWS]]


def _row(quarantine: Quarantine, record: QuarantineRecord) -> ListRow:
    folder = quarantine.root / record.id
    sop_class, modality = _instance_facts(str(folder / record.file), record.size)
    return ListRow(record.id, record.time[:19].replace("T", " "), record.reason,
                   calling_ae(record.source), sop_class, modality,
                   str(record.context.get("destination", "")) if record.context.get("dead_letter")
                   else "", record.message)


def reasons(quarantine: Quarantine, dead_letters: bool) -> list[str]:
    return sorted({r.reason for r in quarantine.list()
                   if bool(r.context.get("dead_letter")) == dead_letters})


class Throughput:
    """Received and delivered per minute, from the cumulative counters sampled now and then:
    the last sample of each minute is kept, and a minute's rate is its difference from the
    minute before. Samples of this process only: the chart starts when the console started."""

    def __init__(self, minutes: int = CHART_MINUTES) -> None:
        self.minutes = minutes
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=minutes + 1)
        self._lock = threading.Lock()

    def record(self, received: int, delivered: int, now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60)
        with self._lock:
            if self._samples and self._samples[-1][0] == minute:
                self._samples.pop()
            self._samples.append((minute, received, delivered))

    def series(self) -> dict[str, list[Any]]:
        """{"minutes": ["HH:MM" (UTC)], "received": [...], "delivered": [...]}, oldest first."""
        with self._lock:
            samples = list(self._samples)
        out: dict[str, list[Any]] = {"minutes": [], "received": [], "delivered": []}
        for (_, r0, d0), (minute, r1, d1) in zip(samples, samples[1:], strict=False):
            out["minutes"].append(datetime.fromtimestamp(minute * 60, UTC).strftime("%H:%M"))
            out["received"].append(max(0, r1 - r0))
            out["delivered"].append(max(0, d1 - d0))
        return out
