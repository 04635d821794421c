"""``[labels]``: values for ``{label.COLUMN}`` templates, one CSV row per case.

The CSV has a header row naming its columns; one of them is ``key``, the keyword of an original
attribute (``AccessionNumber``) whose value picks the row. A study without a row is quarantined
for the profiles that use labels (``missing = "quarantine"``) or gets empty labels
(``missing = "empty"``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError, InstanceError

MISSING_CHOICES = ("quarantine", "empty")


class MissingLabel(InstanceError):
    """The instance's key value has no row in the labels file (only that profile's copy)."""

    reason = "missing-label"
    status = 0xC007


@dataclass(frozen=True)
class LabelTable:
    file: Path
    key: str  # the keyword of the original attribute that picks a row
    missing: str = "quarantine"
    columns: tuple[str, ...] = ()
    rows: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)

    def values(self, key_value: str) -> dict[str, str]:
        """``label.COLUMN`` -> value for the row of ``key_value``; MissingLabel without one
        (unless ``missing = "empty"``). The message names the key attribute, never its value."""
        row = self.rows.get(key_value.strip()) if key_value.strip() else None
        if row is None:
            if self.missing == "empty":
                return {f"label.{c}": "" for c in self.columns}
            raise MissingLabel(f"no row in the labels file for this instance's {self.key}")
        return {f"label.{c}": v for c, v in row.items()}


def read_label_rows(path: Path, key: str, where: str) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
    """(columns, rows by key value) of a labels CSV; ConfigError naming ``where`` otherwise."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from exc
    if not lines:
        raise ConfigError(f"{where}: {path} is empty; its first row names the columns")
    columns = tuple(c.strip() for c in lines[0])
    if key not in columns:
        raise ConfigError(f"{where}: {path} has no {key!r} column (labels.key); its columns are "
                          f"{', '.join(columns)}")
    rows: dict[str, dict[str, str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != len(columns):
            raise ConfigError(f"{where}: {path} line {number}: {len(cells)} cells, the header "
                              f"has {len(columns)}")
        row = dict(zip(columns, cells, strict=True))
        value = row.pop(key)
        if value in rows:
            raise ConfigError(f"{where}: {path} line {number}: a second row for one {key}")
        rows[value] = row
    return columns, rows
