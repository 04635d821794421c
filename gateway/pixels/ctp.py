"""Convert an RSNA CTP DicomPixelAnonymizer script into our pixel rules (TOML).

A CTP script is a list of sections ``{ signature } (x,y,w,h) (x,y,w,h) ...``; text outside braces
and parentheses is comment. A signature is a boolean expression of terms
``Identifier.method("text")`` (identifier: an element keyword or ``[gggg,eeee]``) joined by ``*``
(and), ``+`` (or) and ``!`` (not), with parentheses. CTP blanks the regions of the first
signature an instance matches; so do we, so the rules keep the script's order.

What carries over: equals, contains, startsWith and endsWith (and their IgnoreCase forms) become
globs (``*X*`` for contains; a letter of an IgnoreCase text becomes ``[Xx]``, since our globs are
case-sensitive); equals on a numeric attribute becomes a number. An ``or`` becomes one rule per
alternative, with the same regions. What cannot be expressed (``!``, ``matches`` (a regular
expression), ``isLessThan``/``isGreaterThan``, sequence paths ``A::B``, private or repeating-group
tags, two tests of one attribute in one alternative) makes the whole section skipped, with a
``# skipped:`` comment naming its line. Regions are clipped to the Rows/Columns a signature names
(CTP clips when it blanks; our files must not reach beyond the image).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from gateway.pixels.rules import Region, Value

NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "IS", "DS", "FL", "FD"})
MAX_ALTERNATIVES = 16
NAME_PART_LIMIT = 60

_SIGNATURE = re.compile(r"\{([^}]*)\}")
_PARENTHESES = re.compile(r"\(([^)]*)\)")
_REGION = re.compile(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*")
_IDENTIFIER = r"(?:\[[0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\]|[A-Za-z][A-Za-z0-9]*)"
_TOKEN = re.compile(
    rf"""\s*(?:
        (?P<term>(?P<path>{_IDENTIFIER}(?:::{_IDENTIFIER})*)\.(?P<method>[A-Za-z]+)\(\s*"(?P<arg>[^"]*)"\s*\))
      | (?P<constant>true\.|false\.)
      | (?P<operator>[()*+!])
    )""",
    re.VERBOSE,
)


class _Unsupported(Exception):
    """A signature that our rules cannot express; the message says why."""


@dataclass(frozen=True)
class _Test:
    keyword: str
    value: Value


@dataclass
class _Section:
    line: int
    signature: str
    name: str
    regions: list[Region] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def import_ctp(text: str) -> str:
    """Our TOML rules for a CTP DicomPixelAnonymizer script, sections in the script's order."""
    out = [
        "# Pixel rules converted from a CTP DicomPixelAnonymizer script",
        "# (dicom-gateway pixel-rules import-ctp). Each rule names the CTP line it came from.",
        "# Check every rule with `dicom-gateway pixel-rules preview` before use.",
        "",
    ]
    used_names: set[str] = set()
    imported = skipped = 0
    for section in _sections(text):
        lines, count = _convert(section, used_names)
        out.extend(lines)
        imported += count
        skipped += count == 0
    out.append(f"# {imported} rule(s) imported, {skipped} section(s) skipped.")
    return "\n".join(out) + "\n"


# --- splitting the script ----------------------------------------------------------------------


def _sections(text: str) -> list[_Section]:
    signatures = list(_SIGNATURE.finditer(text))
    sections: list[_Section] = []
    comment_before = text[: signatures[0].start()] if signatures else ""
    previous_name = "CTP rule"
    for index, found in enumerate(signatures):
        following_end = signatures[index + 1].start() if index + 1 < len(signatures) else len(text)
        following = text[found.end():following_end]
        name = _name_from_comment(comment_before) or previous_name
        section = _Section(_line_of(text, found.start()), found.group(1), name)
        _read_regions(text, found.end(), following, section)
        sections.append(section)
        comment_before = following
        previous_name = name
    return sections


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _read_regions(text: str, offset: int, following: str, section: _Section) -> None:
    for found in _PARENTHESES.finditer(following):
        numbers = _REGION.fullmatch(found.group(1))
        if numbers is None:
            line = _line_of(text, offset + found.start())
            text_found = _one_line(found.group(1))
            section.notes.append(f"skipped: CTP line {line}: ({text_found}) is not a region x,y,w,h")
            continue
        section.regions.append(Region(*(int(n) for n in numbers.groups())))


def _name_from_comment(comment: str) -> str:
    """The last one or two comment lines (the vendor and the layout, in CTP's own scripts)."""
    lines = []
    for line in _PARENTHESES.sub(" ", comment).splitlines():
        words = " ".join(line.split())
        if words.strip("*-=#/ "):
            lines.append(_shortened(words))
    return " / ".join(lines[-2:])


def _shortened(words: str) -> str:
    if len(words) <= NAME_PART_LIMIT:
        return words
    cut = words[:NAME_PART_LIMIT].rsplit(" ", 1)[0]
    return cut.rstrip(" -,.;:") + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- one section -------------------------------------------------------------------------------


def _convert(section: _Section, used_names: set[str]) -> tuple[list[str], int]:
    origin = f"CTP line {section.line}: {{ {_one_line(section.signature)} }}"
    notes = [f"# {note}" for note in section.notes]
    try:
        alternatives = _alternatives(section.signature)
    except _Unsupported as exc:
        return [*notes, f"# skipped: {origin}: {exc}", ""], 0
    if not section.regions:
        return [*notes, f"# skipped: {origin}: it has no regions", ""], 0
    rules: list[str] = []
    count = 0
    for number, match in enumerate(alternatives, 1):
        regions, region_notes = _clipped(section.regions, match)
        if len(alternatives) > 1:
            region_notes = [f"alternative {number}: {note}" for note in region_notes]
        notes.extend(f"# {note}" for note in region_notes)
        if not regions:
            continue
        name = section.name if len(alternatives) == 1 else f"{section.name} [{number} of {len(alternatives)}]"
        rules += [
            "[[rules]]",
            f"name = {_toml_string(_unique(name, used_names))}",
            f"match = {_toml_table(match)}",
            f"regions = [{', '.join(f'[{r.x}, {r.y}, {r.width}, {r.height}]' for r in regions)}]",
            "",
        ]
        count += 1
    if not count:
        return [*notes, f"# skipped: {origin}: no region lies inside the image", ""], 0
    return [f"# {origin}", *notes, *rules], count


def _unique(name: str, used: set[str]) -> str:
    candidate, number = name, 1
    while candidate in used:
        number += 1
        candidate = f"{name} ({number})"
    used.add(candidate)
    return candidate


def _clipped(regions: list[Region], match: dict[str, Value]) -> tuple[list[Region], list[str]]:
    columns, rows = match.get("Columns"), match.get("Rows")
    kept, notes = [], []
    for region in regions:
        x0, y0 = max(region.x, 0), max(region.y, 0)
        x1, y1 = region.x + region.width, region.y + region.height
        if isinstance(columns, int):
            x1 = min(x1, columns)
        if isinstance(rows, int):
            y1 = min(y1, rows)
        clipped = Region(x0, y0, x1 - x0, y1 - y0)
        original = f"({region.x},{region.y},{region.width},{region.height})"
        if clipped.width <= 0 or clipped.height <= 0:
            notes.append(f"dropped: region {original} lies outside the image")
        elif clipped != region:
            notes.append(f"clipped: region {original} to the image")
            kept.append(clipped)
        else:
            kept.append(region)
    return kept, notes


# --- the signature language --------------------------------------------------------------------


def _alternatives(signature: str) -> list[dict[str, Value]]:
    """The signature as alternatives (an or of ands), each one rule's match."""
    parser = _Parser(_tokens(signature))
    tree = parser.parse()
    alternatives = _disjunction(tree)
    if not alternatives:
        raise _Unsupported("it matches no instance")
    return [_as_match(tests) for tests in alternatives]


def _tokens(signature: str) -> list[tuple[str, str | _Test]]:
    tokens: list[tuple[str, str | _Test]] = []
    position = 0
    rest = signature.rstrip()
    while position < len(rest):
        found = _TOKEN.match(rest, position)
        if found is None:
            raise _Unsupported(f"cannot read the condition at {_one_line(rest[position:position + 30])!r}")
        position = found.end()
        if found.group("term"):
            tokens.append(("test", _test(found.group("path"), found.group("method"), found.group("arg"))))
        elif found.group("constant"):
            tokens.append(("constant", found.group("constant")))
        else:
            tokens.append(("operator", found.group("operator")))
    return tokens


Tree = tuple[Any, ...]


class _Parser:
    """Recursive descent, CTP's precedence: ``+`` below ``*`` below ``!``."""

    def __init__(self, tokens: list[tuple[str, str | _Test]]) -> None:
        self.tokens = tokens
        self.position = 0

    def parse(self) -> Tree:
        if not self.tokens:
            raise _Unsupported("the condition is empty")
        tree = self._or()
        if self.position != len(self.tokens):
            raise _Unsupported("cannot read the condition (unbalanced parentheses?)")
        return tree

    def _peek(self) -> tuple[str, str | _Test] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take_operator(self, operator: str) -> bool:
        if self._peek() == ("operator", operator):
            self.position += 1
            return True
        return False

    def _or(self) -> Tree:
        tree = self._and()
        while self._take_operator("+"):
            tree = ("or", tree, self._and())
        return tree

    def _and(self) -> Tree:
        tree = self._unary()
        while self._take_operator("*"):
            tree = ("and", tree, self._unary())
        return tree

    def _unary(self) -> Tree:
        token = self._peek()
        if token is None:
            raise _Unsupported("the condition ends too early")
        self.position += 1
        kind, value = token
        if kind == "test":
            return ("test", value)
        if kind == "constant":
            return ("constant", value == "true.")
        if value == "!":
            return ("not", self._unary())
        if value == "(":
            tree = self._or()
            if not self._take_operator(")"):
                raise _Unsupported("a parenthesis is not closed")
            return tree
        raise _Unsupported(f"unexpected {value!r} in the condition")


def _disjunction(tree: Tree) -> list[list[_Test]]:
    kind = tree[0]
    if kind == "test":
        return [[tree[1]]]
    if kind == "constant":
        return [[]] if tree[1] else []
    if kind == "not":
        raise _Unsupported('it uses "!" (not), which a rule cannot express')
    left, right = _disjunction(tree[1]), _disjunction(tree[2])
    combined = left + right if kind == "or" else [a + b for a in left for b in right]
    if len(combined) > MAX_ALTERNATIVES:
        raise _Unsupported(f"it has more than {MAX_ALTERNATIVES} alternatives")
    return combined


def _as_match(tests: list[_Test]) -> dict[str, Value]:
    if not tests:
        raise _Unsupported("it matches every instance (a rule must name a keyword)")
    match: dict[str, Value] = {}
    for test in tests:
        if match.get(test.keyword, test.value) != test.value:
            raise _Unsupported(f"it tests {test.keyword} twice in one alternative")
        match[test.keyword] = test.value
    return match


def _test(path: str, method: str, argument: str) -> _Test:
    if "::" in path:
        raise _Unsupported(f"{path} is inside a sequence, which a rule cannot reach")
    keyword = _keyword(path)
    numeric = any(vr in NUMERIC_VRS for vr in dictionary_VR(keyword).split(" or "))
    bare = argument.strip()
    if method == "equals" and numeric and _number(bare) is not None:
        value: Value | None = _number(bare)
    elif method in ("equals", "equalsIgnoreCase"):
        value = _literal(bare, method.endswith("IgnoreCase")) if bare else None
    elif method in ("contains", "containsIgnoreCase"):
        value = f"*{_literal(argument, method.endswith('IgnoreCase'))}*"
    elif method in ("startsWith", "startsWithIgnoreCase"):
        value = f"{_literal(argument, method.endswith('IgnoreCase'))}*"
    elif method in ("endsWith", "endsWithIgnoreCase"):
        value = f"*{_literal(argument, method.endswith('IgnoreCase'))}"
    else:
        raise _Unsupported(f"{keyword}.{method} has no equivalent in a rule")
    if value is None:
        raise _Unsupported(f"{keyword}.{method} tests for an empty value (our rules never match one)")
    return _Test(keyword, value)


def _keyword(identifier: str) -> str:
    if identifier.startswith("["):
        tag = int(identifier[1:5] + identifier[6:10], 16)
        if (tag >> 16) % 2:
            raise _Unsupported(f"{identifier} is a private element")
        keyword = keyword_for_tag(tag)
        if not keyword or tag_for_keyword(keyword) != tag:
            raise _Unsupported(f"{identifier} is not an element a rule can name (unknown or repeating group)")
        return keyword
    if tag_for_keyword(identifier) is None:
        raise _Unsupported(f"{identifier} is not a DICOM keyword")
    return identifier


def _number(text: str) -> int | float | None:
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    return None


def _literal(text: str, ignore_case: bool) -> str:
    """``text`` as a glob matching exactly it (any case of its letters when ``ignore_case``)."""
    out = []
    for ch in text:
        upper, lower = ch.upper(), ch.lower()
        if ignore_case and upper != lower and len(upper) == 1 and len(lower) == 1:
            out.append(f"[{upper}{lower}]")
        elif ch in "*?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


# --- TOML --------------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04X}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def _toml_table(match: dict[str, Value]) -> str:
    items = [f"{key} = {_toml_string(v) if isinstance(v, str) else repr(v)}" for key, v in match.items()]
    return "{ " + ", ".join(items) + " }"
