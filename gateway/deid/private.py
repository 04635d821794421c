"""Which private attributes Retain Safe Private may keep (PS3.15 Table E.3.10-1 + a user list).

A private element is named by its creator and its offset in the creator's block, not by its tag:
(gggg,xxEE) where xx is whatever block the creator reserved in that data set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from gateway.deid.once import built_once
from gateway.errors import ConfigError

# (normalised creator, group, element offset within the block)
PrivateKey = tuple[str, int, int]

_ELEMENT = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*[, ]\s*(?:xx|XX|[0-9A-Fa-f]{2})([0-9A-Fa-f]{2})\s*\)?")


def normalise_creator(creator: str) -> str:
    return creator.strip().rstrip("\x00").strip().upper()


@dataclass(frozen=True)
class SafePrivateList:
    keys: frozenset[PrivateKey]

    def allows(self, creator: str, group: int, element: int) -> bool:
        return (normalise_creator(creator), group, element & 0xFF) in self.keys

    def union(self, other: SafePrivateList) -> SafePrivateList:
        return SafePrivateList(self.keys | other.keys)


@built_once
def standard_safe_private() -> SafePrivateList:
    """Table E.3.10-1 as shipped with the package."""
    text = resources.files("gateway.deid").joinpath("data/ps315_safe_private.json").read_text()
    keys = set()
    for row in json.loads(text)["attributes"]:
        match = _ELEMENT.fullmatch(row["element"])
        if match is None:  # pragma: no cover - the shipped table is checked by a test
            raise ValueError(f"unreadable safe-private element {row['element']}")
        group, offset = int(match[1], 16), int(match[2], 16)
        keys.add((normalise_creator(row["private_creator"]), group, offset))
    return SafePrivateList(frozenset(keys))


_LINE = re.compile(
    r"\(?\s*([0-9A-Fa-f]{4})\s*[, ]\s*(?:xx|XX|[0-9A-Fa-f]{2})([0-9A-Fa-f]{2})\s*\)?\s*(.*)"
)


def _element_and_creator(line: str) -> tuple[re.Match[str] | None, str]:
    """``gggg eeee Creator`` or ``(gggg,xxee) Creator`` -> (match of the element, creator)."""
    match = _LINE.fullmatch(line)
    return match, (match[3].strip() if match else "")


def parse_user_list(lines: Iterable[str], source: str = "safe private list") -> SafePrivateList:
    """Parse a user's list of private elements to keep.

    Each line is ``gggg eeee Creator Name`` (eeee as ``xxEE`` or with any block, e.g. ``10EE``).
    A ``CREATOR Creator Name`` line sets the creator for the following lines that give none.
    ``#`` starts a comment; blank lines are ignored.
    """
    keys = set()
    current_creator = ""
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.upper().startswith("CREATOR "):
            current_creator = line[len("CREATOR ") :].strip()
            continue
        match, creator = _element_and_creator(line)
        creator = creator or current_creator
        if match is None or not creator:
            raise ConfigError(
                f"{source}, line {number}: expected 'gggg eeee Creator' (e.g. '0019 xx0C SIEMENS"
                " MR HEADER') or a 'CREATOR name' line before 'gggg eeee'"
            )
        group = int(match[1], 16)
        if group % 2 == 0:
            raise ConfigError(f"{source}, line {number}: group {match[1]} is not private (odd)")
        keys.add((normalise_creator(creator), group, int(match[2], 16)))
    return SafePrivateList(frozenset(keys))
