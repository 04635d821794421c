"""Device rules for burned-in text: which rectangles to blank in the pixels of which instances.

A rules file (TOML) holds ``[[rules]]`` blocks, each with a ``name``, a ``match`` table of DICOM
keywords and the values they must have, and the ``regions`` (x, y, width, height) to blank:

    [[rules]]
    name = "ACME US top banner"
    match = { Modality = "US", Manufacturer = "ACME*", Rows = 480, Columns = 640 }
    regions = [[0, 0, 640, 40], [600, 440, 40, 40]]

The first rule whose every key holds is the instance's rule. A string holds when the attribute's
text (stripped; a multi-valued one as "A\\B") matches it as a case-sensitive glob (``*``, ``?``,
``[...]``); a number holds when the single value equals it. An attribute the instance lacks, or
has empty, never holds. Parsing reports every problem at once, each with its line in the file.
Pure: no pixel decoding, no numpy or Pillow of its own.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from gateway.errors import ConfigError

RULE_KEYS = ("name", "match", "regions")
# The device facts a rule is usually keyed on; named in the quarantine reason of an unmatched instance.
HINT_KEYWORDS = ("Modality", "Manufacturer", "ManufacturerModelName", "Rows", "Columns")
# Values that are bytes or items, not text or numbers: nothing a rule can compare.
UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
HINT_VALUE_LIMIT = 64

Value = str | int | float


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Rule:
    name: str
    match: Mapping[str, Value]
    regions: tuple[Region, ...]
    line: int

    def holds_for(self, ds: Dataset) -> bool:
        return all(_holds(ds, keyword, expected) for keyword, expected in self.match.items())


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    source: str

    def match(self, ds: Dataset) -> Rule | None:
        """The first rule whose every key holds for the instance, or None."""
        for rule in self.rules:
            if rule.holds_for(ds):
                return rule
        return None


# --- matching ----------------------------------------------------------------------------------


def _holds(ds: Dataset, keyword: str, expected: Value) -> bool:
    value = _attribute_value(ds, keyword)
    if value is None:
        return False
    if isinstance(expected, str):
        text = _text_form(value)
        return text is not None and fnmatchcase(text, expected)
    return _number_equals(value, expected)


def _attribute_value(ds: Dataset, keyword: str) -> Any:
    """The attribute's value, or None when it is absent, empty or unreadable."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    try:
        value = ds[tag].value
    except (ValueError, TypeError, OverflowError):  # a malformed value holds for no rule
        return None
    if value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0):
        return None
    return value


def _text_form(value: Any) -> str | None:
    if isinstance(value, bytes | bytearray | Dataset | Sequence):
        return None  # bytes and sequences have no text form to compare
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value).strip()
    return str(value).strip()


def _number_equals(value: Any, expected: int | float) -> bool:
    if isinstance(value, bool | MultiValue | list | tuple):
        return False
    if isinstance(value, int | float):
        return value == expected
    if isinstance(value, str):
        try:
            return float(value.strip()) == expected
        except ValueError:
            return False
    return False


def missing_rule_hint(ds: Dataset) -> str:
    """The quarantine reason for an at-risk instance no rule matches: the device facts a new
    rule would be keyed on (device facts, not patient data)."""
    facts = []
    for keyword in HINT_KEYWORDS:
        value = _attribute_value(ds, keyword)
        text = _text_form(value) if value is not None else None
        if text:
            facts.append(f"{keyword}={_hint_value(text)}")
    if not facts:
        return "no pixel rule for an instance without " + ", ".join(HINT_KEYWORDS)
    return "no pixel rule for " + " ".join(facts)


def _hint_value(text: str) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in text)[:HINT_VALUE_LIMIT]
    if shown and all(ch.isalnum() or ch in "-_.^\\/+:" for ch in shown):
        return shown
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- loading -----------------------------------------------------------------------------------


def load_rules(path: Path) -> RuleSet:
    """The rules file at ``path``; ConfigError names the file and the line of every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pixel rules ({exc.strerror or type(exc).__name__})") \
            from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the pixel rules are not UTF-8 text (byte {exc.start})") from exc
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str) -> RuleSet:
    """Rules from the TOML ``text`` read from ``source`` (a file name, for messages)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, detail = _syntax_error_position(str(exc), text)
        raise ConfigError(f"{source}, line {line}: TOML syntax: {detail}") from exc
    problems = _Problems()
    layout = _Layout(text)
    for key in document:
        if key != "rules":
            problems.add(layout.top_level_line(key), f"unknown key {key!r} (expected [[rules]] blocks)")
    raw_rules = document.get("rules", [])
    if not isinstance(raw_rules, list):
        problems.add(layout.top_level_line("rules"), "rules must be [[rules]] blocks")
        raw_rules = []
    rules = []
    first_line_of_name: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        block = layout.block(index, len(raw_rules))
        rule = _parse_rule(raw, block, problems)
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name.strip():
            name = name.strip()
            if name in first_line_of_name:
                problems.add(block.key_line("name"),
                             f"duplicate rule name {name!r} (also at line {first_line_of_name[name]})")
            first_line_of_name.setdefault(name, block.header)
        if rule is not None:
            rules.append(rule)
    problems.raise_if_any(source)
    return RuleSet(tuple(rules), source)


def _syntax_error_position(message: str, text: str) -> tuple[int, str]:
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
    if found:
        return int(found.group(1)), f"{message[:found.start()]} (column {found.group(2)})"
    found = re.search(r"\s*\(at end of document\)", message)
    if found:
        return max(1, text.count("\n") + (0 if text.endswith("\n") else 1)), message[:found.start()] \
            + " (at the end)"
    return 1, message


class _Problems:
    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        self.found.append((line, message))

    def raise_if_any(self, source: str) -> None:
        if self.found:
            ordered = sorted(self.found, key=lambda problem: problem[0])
            raise ConfigError("\n".join(f"{source}, line {line}: {message}" for line, message in ordered))


def _parse_rule(raw: Any, block: _Block, problems: _Problems) -> Rule | None:
    if not isinstance(raw, dict):
        problems.add(block.header, "a rule must be a table with name, match and regions")
        return None
    errors_before = len(problems.found)
    for key in raw:
        if key not in RULE_KEYS:
            expected = ", ".join(RULE_KEYS)
            problems.add(block.key_line(key), f"unknown key {key!r} in a rule (expected {expected})")
    name = _parse_name(raw.get("name"), block, problems)
    match = _parse_match(raw.get("match"), block, problems)
    regions = _parse_regions(raw.get("regions"), block, problems, match or {})
    if len(problems.found) > errors_before or name is None or match is None or regions is None:
        return None
    return Rule(name, dict(match), regions, block.header)  # a dict: settings are pickled


def _parse_name(raw: Any, block: _Block, problems: _Problems) -> str | None:
    if raw is None:
        problems.add(block.header, "the rule has no name")
        return None
    if not isinstance(raw, str) or not raw.strip():
        problems.add(block.key_line("name"), "name must be a non-empty string")
        return None
    return raw.strip()


def _parse_match(raw: Any, block: _Block, problems: _Problems) -> dict[str, Value] | None:
    if raw is None:
        problems.add(block.header, "the rule has no match (keywords and the values they must have)")
        return None
    line = block.key_line("match")
    if not isinstance(raw, dict):
        problems.add(line, "match must be a table, e.g. { Modality = \"US\", Rows = 480 }")
        return None
    if not raw:
        problems.add(line, "match is empty: a rule must name at least one keyword")
        return None
    match: dict[str, Value] = {}
    for keyword, expected in raw.items():
        key_line = block.match_key_line(keyword)
        problem = _keyword_problem(keyword) or _value_problem(keyword, expected)
        if problem:
            problems.add(key_line, problem)
            continue
        match[keyword] = expected
    return match


def _keyword_problem(keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return f"unknown DICOM keyword {keyword!r} in match"
    vr = dictionary_VR(tag)
    if any(choice in UNMATCHABLE_VRS for choice in vr.split(" or ")):
        return f"{keyword} (VR {vr}) holds no text or number a rule can compare"
    return None


def _value_problem(keyword: str, expected: Any) -> str | None:
    if isinstance(expected, bool) or not isinstance(expected, str | int | float):
        return f"{keyword}: the value must be a string (glob) or a number"
    if isinstance(expected, float) and expected != expected:
        return f"{keyword}: the value must be a number, not nan"
    if isinstance(expected, str) and not expected.strip():
        return f"{keyword}: an empty string matches no instance"
    return None


def _parse_regions(raw: Any, block: _Block, problems: _Problems,
                   match: Mapping[str, Value]) -> tuple[Region, ...] | None:
    if raw is None:
        problems.add(block.header, "the rule has no regions (x, y, width, height to blank)")
        return None
    line = block.key_line("regions")
    if not isinstance(raw, list) or not raw:
        problems.add(line, "regions must be a non-empty list of [x, y, width, height]")
        return None
    region_lines = block.region_lines()
    regions = []
    for index, item in enumerate(raw):
        item_line = region_lines[index] if index < len(region_lines) else line
        region = _parse_region(item, index + 1, item_line, problems, match)
        if region is not None:
            regions.append(region)
    return tuple(regions) if len(regions) == len(raw) else None


def _parse_region(item: Any, number: int, line: int, problems: _Problems,
                  match: Mapping[str, Value]) -> Region | None:
    if not (isinstance(item, list) and len(item) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)):
        problems.add(line, f"region {number} must be 4 non-negative integers [x, y, width, height]")
        return None
    region = Region(*item)
    if region.width == 0 or region.height == 0:
        problems.add(line, f"region {number} has no area (width and height must be 1 or more)")
        return None
    columns, rows = match.get("Columns"), match.get("Rows")
    beyond = []
    if isinstance(columns, int) and region.x + region.width > columns:
        beyond.append(f"x + width = {region.x + region.width} > Columns = {columns}")
    if isinstance(rows, int) and region.y + region.height > rows:
        beyond.append(f"y + height = {region.y + region.height} > Rows = {rows}")
    if beyond:
        problems.add(line, f"region {number} reaches beyond the image the rule matches ({'; '.join(beyond)})")
        return None
    return region


# --- where things are in the file (tomllib gives no line numbers) ------------------------------

_RULES_HEADER = re.compile(r"^\s*\[\[\s*rules\s*\]\]\s*(#.*)?$")
# A table header names a key; a line of a multi-line regions array starts with "[" and a digit.
_TABLE_HEADER = re.compile(r"""^\s*\[\[?\s*[A-Za-z_"'][^\]]*\]\]?\s*(#.*)?$""")


class _Layout:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [n for n, line in enumerate(self.lines, 1) if _RULES_HEADER.match(line)]

    def top_level_line(self, key: str) -> int:
        pattern = re.compile(rf"""^\s*(\[\[?\s*)?["']?{re.escape(key)}["']?\s*[\].=]""")
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                return number
        return 1

    def block(self, index: int, count: int) -> _Block:
        if len(self.headers) != count:  # rules written another way (an inline array): no block lines
            line = self.top_level_line("rules")
            return _Block(self.lines, line, line, line)
        start = self.headers[index]
        end = self.headers[index + 1] - 1 if index + 1 < count else len(self.lines)
        for number in range(start + 1, end + 1):
            if _ends_rule_block(self.lines[number - 1]):
                end = number - 1
                break
        return _Block(self.lines, start, start, end)


def _ends_rule_block(line: str) -> bool:
    """A table header other than a rule's own sub-table (``[rules.match]``)."""
    return bool(_TABLE_HEADER.match(line)) and not re.match(r"^\s*\[\s*rules\s*\.", line)


class _Block:
    """The lines of one ``[[rules]]`` block: header line and last line (1-based, inclusive)."""

    def __init__(self, lines: list[str], header: int, first: int, last: int) -> None:
        self.lines = lines
        self.header = header
        self.first = first
        self.last = last

    def _numbered(self) -> Iterator[tuple[int, str]]:
        for number in range(self.first, self.last + 1):
            yield number, self.lines[number - 1]

    def key_line(self, key: str) -> int:
        assignment = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*[=.]""")
        subtable = re.compile(rf"^\s*\[\s*rules\s*\.\s*{re.escape(key)}\s*\]")
        for number, line in self._numbered():
            if assignment.match(line) or subtable.match(line):
                return number
        return self.header

    def match_key_line(self, keyword: str) -> int:
        start = self.key_line("match")
        pattern = re.compile(rf"""(^|[{{,.\s])["']?{re.escape(keyword)}["']?\s*=""")
        for number, line in self._numbered():
            if number >= start and pattern.search(line.split("#", 1)[0]):
                return number
        return start

    def region_lines(self) -> list[int]:
        """The line where each inner ``[`` of the regions array opens, in order."""
        start = self.key_line("regions")
        if start == self.header:
            return []
        found: list[int] = []
        depth = 0
        seen_equals = False
        for number in range(start, self.last + 1):
            for ch in _code_of(self.lines[number - 1]):
                if not seen_equals:
                    seen_equals = ch == "="
                    continue
                if ch == "[":
                    depth += 1
                    if depth == 2:
                        found.append(number)
                elif ch == "]":
                    depth -= 1
                    if depth == 0:
                        return found
        return found


def _code_of(line: str) -> str:
    """The line without its comment and without the insides of strings."""
    out = []
    quote = ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        else:
            out.append(ch)
    return "".join(out)
