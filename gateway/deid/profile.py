"""PS3.15 Annex E Table E.1-1 as a lookup: which action applies to which tag.

The table itself is data (``data/ps315_annex_e.json``, a copy of the project's shared
extract with its edition and source inside); this module only resolves it for a chosen set of
E.3 options. A test keeps the copy identical to the shared source.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.deid.once import built_once
from gateway.errors import ConfigError

KEEP = "K"
REMOVE = "X"
ZERO = "Z"
DUMMY = "D"
CLEAN = "C"
REPLACE_UID = "U"

CONTRADICTORY_OPTIONS = frozenset({"retain_long_full_dates", "retain_long_modified_dates"})


@dataclass(frozen=True)
class Option:
    key: str
    name: str
    code: str
    scheme: str


@dataclass(frozen=True)
class Profile:
    """The effective action of every listed tag under the basic profile plus ``options``."""

    edition: str
    options: tuple[Option, ...]
    actions: dict[int, str]
    keywords: dict[int, str]
    # Repeating groups: curves (50xx,xxxx) and overlay data/comments (60xx,3000/4000).
    curve_action: str
    overlay_action: str
    private_action: str

    @property
    def option_keys(self) -> frozenset[str]:
        return frozenset(o.key for o in self.options)

    def action_for(self, tag: int) -> str | None:
        """Action for a public tag, or None when Table E.1-1 does not list it."""
        action = self.actions.get(tag)
        if action is not None:
            return action
        group = tag >> 16
        if 0x5000 <= group <= 0x50FF and group % 2 == 0:
            return self.curve_action
        if 0x6000 <= group <= 0x60FF and group % 2 == 0:
            return self.overlay_action if (tag & 0xFFFF) in (0x3000, 0x4000) else None
        return None


@built_once
def table() -> dict[str, Any]:
    """Table E.1-1 as shipped with the package (edition, source, options, attributes)."""
    text = resources.files("gateway.deid").joinpath("data/ps315_annex_e.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def option_catalogue() -> dict[str, Option]:
    return {
        o["key"]: Option(key=o["key"], name=o["name"], code=o["code"], scheme=o["scheme"])
        for o in table()["options"]
    }


def _resolve(basic: str, option_actions: Iterable[str | None]) -> str:
    # Where several enabled options speak, keeping wins over cleaning, cleaning over the basic
    # action: each option is a deliberate decision to retain more.
    chosen = {a for a in option_actions if a}
    if KEEP in chosen:
        return KEEP
    if CLEAN in chosen:
        return CLEAN
    return basic


def build_profile(option_keys: Iterable[str] = ()) -> Profile:
    """Resolve Table E.1-1 for the given E.3 option keys; unknown or contradictory keys raise."""
    catalogue = option_catalogue()
    given = list(option_keys)
    for index, key in enumerate(given):  # numbered as written, before duplicates are dropped
        if key not in catalogue:
            raise ConfigError(
                f"deidentify.options[{index}]: unknown option {key!r}; "
                f"choose from {', '.join(sorted(catalogue))}"
            )
    keys = list(dict.fromkeys(given))
    if set(keys) >= CONTRADICTORY_OPTIONS:
        raise ConfigError(
            "deidentify.options: 'retain_long_full_dates' and 'retain_long_modified_dates' "
            "exclude each other; keep one"
        )
    actions: dict[int, str] = {}
    keywords: dict[int, str] = {}
    special: dict[str, str] = {}
    for row in table()["attributes"]:
        action = _resolve(row["basic"], (row["options"].get(k) for k in keys))
        pattern = row["pattern"].lower()
        if pattern == "private" or "x" in pattern:
            special[pattern] = action
            continue
        tag = int(pattern, 16)
        actions[tag] = action
        keywords[tag] = row["keyword"] or row["name"]
    return Profile(
        edition=table()["edition"],
        options=tuple(catalogue[k] for k in keys),
        actions=actions,
        keywords=keywords,
        curve_action=special["50xxxxxx"],
        overlay_action=special["60xx3000"],
        private_action=special["private"],
    )
