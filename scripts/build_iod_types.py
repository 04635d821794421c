"""Writes gateway/deid/data/iod_types.json.gz: the Type (1, 1C, 2, 2C, 3) of every attribute, at every
nesting path, of every IOD, from the machine-readable copy of PS3.3 that ships in the highdicom wheel
(highdicom/_standard/: sop_class_iod_map.json, iod_module_map.json, module_attribute_map.json).

highdicom is needed only here, never at run time. Regenerate after upgrading the pinned version:

    .venv/bin/pip install -e '.[tables]'
    .venv/bin/python scripts/build_iod_types.py                 # tables of the installed highdicom
    .venv/bin/python scripts/build_iod_types.py /path/_standard  # or of an unpacked wheel's folder

Output layout (see gateway/deid/iod.py, which reads it):
  sop_classes  SOP Class UID -> IOD key
  iods         IOD key -> [[module key, usage M/C/U], ...]
  modules      module key -> its {path: type} as one string of "path=type" entries joined by ","
               (read only when a SOP class needs the module); a path is the tags from the top
               level down as 8-digit hex strings joined by ">" ("00081110>00081150=1"); overlay
               repeaters (60xx) as group 6000
  recursive    tag -> keyword of the sequences whose items nest themselves (SR content trees ...)
  source       highdicom version, standard edition, the input files' sha256, generation date

Recursive sequences: PS3.3 defines some items by including the macro that defines the sequence
(the Document Relationship Macro's Content Sequence in SR, C.17.3; the Inventory's Incorporated
Inventory Instance Sequence). highdicom's tables stop such recursion after one or two levels, and the
deepest listed level lacks the recursive part (in the SR Document Content Module the Content
Sequence item has no nested Content Sequence and no Observation DateTime). Here each such sequence
is folded onto its first level (gateway.deid.iod.canonical_path): entries under a deeper occurrence
move up, so the first level holds the union of all listed levels (the build stops if two levels
disagree on a Type); a nested occurrence of the sequence element itself keeps one level, as its
Type inside an item may differ from the top level's. The reader folds lookups the same way. In the
SR Document Content Module the root data set is itself a content item (the Document Content and
Document Relationship Macros are included at the root and in every Content Sequence item), so its
root attributes are also added to the Content Sequence item.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gzip
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom.datadict import RepeatersDictionary, tag_for_keyword

from gateway.deid.iod import DATA_FILE, FORMAT_VERSION, TYPE_ORDER, canonical_path, encode_module, stricter

TARGET = Path(__file__).resolve().parent.parent / "gateway" / "deid" / "data" / DATA_FILE
INPUT_FILES = ("sop_class_iod_map.json", "iod_module_map.json", "module_attribute_map.json")
EDITION_NOT_STATED = (
    "not stated: neither the highdicom wheel (tables, metadata, sources) nor its generator "
    "(bin/create_iods_modules.py, which converts the innolitics/dicom-standard JSON) names the edition"
)

# Sequences whose items include the macro that defines the sequence itself (true recursion).
# ReferencedSOPSequence > ReferencedSOPSequence (SR) and RadiationGenerationModeSequence >
# RadiationGenerationModeSequence (RT) also repeat in the tables but are fixed, finite nestings.
RECURSIVE_SEQUENCES = ("ContentSequence", "IncorporatedInventoryInstanceSequence")
# Modules whose root data set is an item of the recursive sequence (the SR root content item).
ROOT_IS_ITEM = {"sr-document-content": "ContentSequence"}

Path_ = tuple[int, ...]


def keyword_tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is not None:
        return int(tag)
    for mask, entry in RepeatersDictionary.items():
        if entry[4] == keyword:  # e.g. 60xx0010 OverlayRows: stored as group 6000
            return int(mask.replace("xx", "00"), 16)
    raise KeyError(keyword)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Builder:
    def __init__(self) -> None:
        self.unknown_keywords: set[str] = set()
        self.untyped_entries = 0
        self.fold_conflicts: list[str] = []
        self.recursive = {keyword_tag(k): k for k in RECURSIVE_SEQUENCES}

    def module_types(self, key: str, entries: list[Mapping[str, Any]]) -> dict[Path_, str]:
        types: dict[Path_, str] = {}
        for entry in entries:
            if entry["type"] not in TYPE_ORDER:  # normalized-service modules carry no Type
                self.untyped_entries += 1
                continue
            try:
                path = tuple(keyword_tag(k) for k in [*entry["path"], entry["keyword"]])
            except KeyError as exc:
                self.unknown_keywords.add(str(exc.args[0]))
                continue
            self.merge(key, types, path, entry["type"], derived=False)
        if key in ROOT_IS_ITEM:
            self.add_root_to_item(key, types, keyword_tag(ROOT_IS_ITEM[key]))
        return types

    def merge(self, module: str, types: dict[Path_, str], path: Path_, type_: str, derived: bool) -> None:
        """Adds an entry; a derived one (moved by folding, or copied from the root) must agree."""
        folded = canonical_path(path, self.recursive)
        known = types.get(folded)
        if known is not None and known != type_ and (derived or folded != path):
            self.fold_conflicts.append(f"{module} {encode_module({folded: known})}/{type_}")
        types[folded] = type_ if known is None else stricter(known, type_)

    def add_root_to_item(self, module: str, types: dict[Path_, str], sequence: int) -> None:
        for path, attribute_type in list(types.items()):
            self.merge(module, types, (sequence, *path), attribute_type, derived=True)


def self_nested_sequences(modules: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for key, entries in modules.items():
        for entry in entries:
            chain = [*entry["path"], entry["keyword"]]
            for keyword in {k for k in chain if chain.count(k) > 1}:
                found.setdefault(keyword, set()).add(key)
    return found


def installed_tables() -> Path:
    try:
        import highdicom
    except ImportError:
        sys.exit("highdicom is not installed: pip install -e '.[tables]', or pass the _standard folder")
    return Path(highdicom.__file__).resolve().parent / "_standard"


def wheel_record(folder: Path) -> Path | None:
    """The RECORD of the highdicom dist-info beside the package holding `folder`, if there is one."""
    records = sorted(folder.parent.parent.glob("highdicom-*.dist-info/RECORD"))
    return records[0] if len(records) == 1 else None


def version_of_tables(folder: Path, given: str | None) -> str:
    """The highdicom version: given on the command line, else from the dist-info beside the tables."""
    record = wheel_record(folder)
    if record is not None:
        check_against_record(folder, record)
    if given:
        return given
    if record is None:
        sys.exit("cannot tell which highdicom version these tables come from: pass --highdicom-version")
    return record.parent.name.removeprefix("highdicom-").removesuffix(".dist-info")


def check_against_record(folder: Path, record: Path) -> None:
    """The tables must be the ones the wheel was built with (its RECORD lists their sha256)."""
    listed = {}
    for line in record.read_text(encoding="utf-8").splitlines():
        name, digest, _size = line.rsplit(",", 2)
        if name.startswith("highdicom/_standard/") and digest.startswith("sha256="):
            listed[name.rsplit("/", 1)[1]] = digest.removeprefix("sha256=")
    for name in INPUT_FILES:
        encoded = base64.urlsafe_b64encode(hashlib.sha256((folder / name).read_bytes()).digest())
        if listed.get(name) != encoded.decode("ascii").rstrip("="):
            sys.exit(f"{folder / name} differs from the copy listed in {record}")


def build(folder: Path, highdicom_version: str, generated: str) -> dict[str, Any]:
    sop_classes = json.loads((folder / "sop_class_iod_map.json").read_text(encoding="utf-8"))
    iods = json.loads((folder / "iod_module_map.json").read_text(encoding="utf-8"))
    modules = json.loads((folder / "module_attribute_map.json").read_text(encoding="utf-8"))

    used_iods = {iod for iod in sop_classes.values() if iod in iods}
    used_modules = {m["key"] for iod in used_iods for m in iods[iod]}
    builder = Builder()
    module_types = {
        key: encode_module(builder.module_types(key, modules[key]))
        for key in sorted(used_modules & modules.keys())
    }
    if builder.fold_conflicts:
        sys.exit("types differ between levels of a recursive sequence: " + "; ".join(builder.fold_conflicts))
    return {
        "format": FORMAT_VERSION,
        "source": {
            "highdicom_version": highdicom_version,
            "dicom_standard_edition": EDITION_NOT_STATED,
            "files": {name: sha256(folder / name) for name in INPUT_FILES},
            "generated": generated,
            "generator": "scripts/build_iod_types.py",
        },
        "recursive": {f"{tag:08X}": kw for tag, kw in sorted(builder.recursive.items())},
        "sop_classes": {uid: iod for uid, iod in sorted(sop_classes.items()) if iod in iods},
        "iods": {iod: [[m["key"], m["usage"]] for m in iods[iod]] for iod in sorted(used_iods)},
        "modules": module_types,
        "skipped": {
            "modules_named_by_iods_but_absent": sorted(used_modules - modules.keys()),
            "sop_classes_without_iod": sorted(uid for uid, iod in sop_classes.items() if iod not in iods),
            "entries_without_type": builder.untyped_entries,
            "keywords_not_in_pydicom": sorted(builder.unknown_keywords),
        },
    }


def encode(data: Mapping[str, Any]) -> bytes:
    text = json.dumps(data, separators=(",", ":"), sort_keys=False)
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("folder", nargs="?", type=Path,
                        help="highdicom's _standard folder (default: installed)")
    parser.add_argument("--highdicom-version", help="version of the wheel the folder comes from")
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    folder = args.folder or installed_tables()
    data = build(folder, version_of_tables(folder, args.highdicom_version), datetime.date.today().isoformat())
    args.output.write_bytes(encode(data))
    nested = self_nested_sequences(json.loads((folder / "module_attribute_map.json").read_text("utf-8")))
    counts = ", ".join(f"{len(data[k])} {k}" for k in ("sop_classes", "iods", "modules"))
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): {counts}")
    print(f"self-nested sequences in the tables (recursive: {', '.join(RECURSIVE_SEQUENCES)}): "
          + "; ".join(f"{k} in {', '.join(sorted(v))}" for k, v in sorted(nested.items())))
    print(f"skipped: {json.dumps(data['skipped'])}")


if __name__ == "__main__":
    main()
