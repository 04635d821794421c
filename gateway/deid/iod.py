"""The Type (1, 1C, 2, 2C, 3) of an attribute at a nesting path in the IOD of a SOP class (PS3.3).

The tables are data (``data/iod_types.json.gz``), made at development time by
``scripts/build_iod_types.py`` from the machine-readable copy of PS3.3 in the highdicom wheel (the
file records the highdicom version, the input files' sha256 and the date; highdicom is not needed at
run time: ``pip install -e '.[tables]'`` only to regenerate). Read lazily on first use, then cached.

A path is the tags from the top level down: the enclosing sequences' tags, then the attribute's own,
e.g. ``(0x0040A730, 0x0040A160)`` for Content Sequence > Text Value. Where several modules (or
macros) of the IOD define the same path, the strictest Type wins (1 > 1C > 2 > 2C > 3).

Recursive sequences (SR Content Sequence, Incorporated Inventory Instance Sequence): their items hold
the same attributes with the same Types at every depth, while the tables list only the first levels.
The data keeps one level (the union of the listed ones, plus the SR root content item's attributes);
a deeper path is folded onto it: everything between the first and the last occurrence of the
sequence's tag is dropped, so Content Sequence > Content Sequence > ... > Text Value answers like
Content Sequence > Text Value at any depth, and a nested Content Sequence element itself answers
like Content Sequence > Content Sequence. Overlay repeating groups (60xx) answer as group 6000.

Not answered (None): unknown SOP classes, paths the IOD does not define, and attributes inside
sequences whose items the standard leaves open (e.g. Modified Attributes Sequence).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.deid.once import built_once

DATA_FILE = "iod_types.json.gz"
FORMAT_VERSION = 2
TYPE_ORDER = ("1", "1C", "2", "2C", "3")  # strictest first
_RANK = {t: i for i, t in enumerate(TYPE_ORDER)}
_OVERLAY_GROUP = 0x6000
# Type 1C/2C attributes whose condition is the presence of another attribute of the same data set
# (PS3.3), where Table E.1-1 removes the condition's attribute but keeps the dependent one: kept
# alone, the dependent would be "present when condition unsatisfied".
REQUIRED_IF_PRESENT: Mapping[int, int] = {
    # C.7.1.3 Clinical Trial Subject: Ethics Committee Name (D) is required if the Approval
    # Number (X) is present.
    0x00120081: 0x00120082,
}

TagPath = tuple[int, ...]


@dataclass(frozen=True)
class _Tables:
    sop_classes: dict[str, str]
    iods: dict[str, list[list[str]]]
    modules: dict[str, str]  # module key -> encoded entries, parsed on first use
    recursive: frozenset[int]
    source: dict[str, Any]


def attribute_type(sop_class_uid: str, path: TagPath) -> str | None:
    """Type of the attribute at ``path`` in the IOD of ``sop_class_uid``; None if unknown there."""
    iod = _tables().sop_classes.get(sop_class_uid)
    if iod is None or not path:
        return None
    types = _iod_types(iod)
    found = types.get(path)
    if found is None:
        canonical = canonical_path(path, _tables().recursive)
        if canonical != path:
            found = types.get(canonical)
    return found


def is_known_sop_class(sop_class_uid: str) -> bool:
    return sop_class_uid in _tables().sop_classes


def iod_of(sop_class_uid: str) -> str | None:
    """The IOD key (e.g. ``ct-image``) of a SOP class, or None when unknown."""
    return _tables().sop_classes.get(sop_class_uid)


def data_source() -> Mapping[str, Any]:
    """Where the packaged tables come from: highdicom version, edition, input sha256, date."""
    return _tables().source


def canonical_path(path: TagPath, recursive: Collection[int]) -> TagPath:
    """``path`` with recursive sequences folded onto their first level, overlay groups as 6000.

    Shared with scripts/build_iod_types.py, which stores the data in this form.
    """
    for tag in recursive if len(path) > 2 else ():  # a fold needs at least S > S > X
        if path.count(tag) > 1:
            first = path.index(tag)
            last = len(path) - 1 - path[::-1].index(tag)
            # The nested sequence element itself keeps one level of nesting: its Type is the one
            # inside an item, which may differ from the top level's.
            path = path[: first + 1] + path[last:] if last == len(path) - 1 else path[:first] + path[last:]
    if any(_is_overlay_group(tag >> 16) for tag in path):
        path = tuple((_OVERLAY_GROUP << 16) | (t & 0xFFFF) if _is_overlay_group(t >> 16) else t for t in path)
    return path


def stricter(a: str, b: str) -> str:
    return a if _RANK[a] <= _RANK[b] else b


def _is_overlay_group(group: int) -> bool:
    return 0x6000 <= group <= 0x601E and group % 2 == 0


def encode_module(types: Mapping[TagPath, str]) -> str:
    """A module's {path: type} as stored: "0040A730>0040A160=1C,..." (paths as hex tags, sorted)."""
    return ",".join(">".join(f"{tag:08X}" for tag in path) + "=" + t for path, t in sorted(types.items()))


def decode_module(text: str) -> dict[TagPath, str]:
    types: dict[TagPath, str] = {}
    parsed: dict[str, TagPath] = {}  # sorted entries list a sequence before its items: reuse it
    for entry in text.split(","):
        key, _, attribute_type = entry.partition("=")
        parent, _, last = key.rpartition(">")
        known = parsed.get(parent)
        path = (*known, int(last, 16)) if known else tuple(int(tag, 16) for tag in key.split(">"))
        parsed[key] = path
        types[path] = attribute_type
    return types


@built_once
def _tables() -> _Tables:
    raw = resources.files("gateway.deid").joinpath("data", DATA_FILE).read_bytes()
    data = json.loads(gzip.decompress(raw))
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"{DATA_FILE}: format {data.get('format')}, expected {FORMAT_VERSION}")
    return _Tables(
        sop_classes=data["sop_classes"],
        iods=data["iods"],
        modules=data["modules"],
        recursive=frozenset(int(tag, 16) for tag in data["recursive"]),
        source=data["source"],
    )


@built_once
def _module_types(module: str) -> dict[TagPath, str]:
    text = _tables().modules.get(module)
    return decode_module(text) if text else {}


@built_once
def _iod_types(iod: str) -> dict[TagPath, str]:
    merged: dict[TagPath, str] = {}
    for module, _usage in _tables().iods[iod]:
        for path, attribute_type in _module_types(module).items():
            known = merged.get(path)
            merged[path] = attribute_type if known is None else stricter(known, attribute_type)
    return merged
