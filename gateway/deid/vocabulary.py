"""The "C" (clean) action for free text: keep only words known not to identify anyone.

PS3.15's Clean Descriptors and Clean Structured Content options ask for descriptions "replaced
with values of similar meaning known not to contain identifying information". Cleaning here is
an allow-list: a word stays only when it is in the vocabulary (``data/clean_words.txt``, made by
``scripts/build_vocabulary.py`` from the standard's code meanings and imaging protocol words) or
in the user's own word list. Everything else goes: names, IDs, dates, times, phone numbers,
e-mail addresses, URLs, street addresses, and words the vocabulary does not know.

Numbers follow rules of their own: a measurement (5MM, 2.5 MM, 120KV, 1.5T, 3D, 10%) and a
sequence or kernel code (T1, T2, H30s, B30f, L4, B1000) stay; a standalone number of one or two
digits (or an ordinal) stays only between kept words (so "SERIES 2" keeps it but "12 Elm Street"
and "March 4" do not); any longer number, and digit groups joined by - / . : (dates, phone
numbers, times), go.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from gateway.deid.once import built_once
from gateway.errors import ConfigError

# One token per match, tried in this order at each position. The URL and @ alternatives are
# only needed (and only paid for) when the text has "://", "www." or "@" in it.
_GROUP_WORD_SEP = (
    r"|(?P<group>(?<![^\W_])\d+(?:[-/.:,]\d+)+[^\W_]*%?)"  # 2.5MM, 1950-03-04, 555-0199, 12:30
    r"|(?P<word>[^\W_]+(?:'[^\W_]+)*%?)"  # O'Brien is one word, not O and Brien
    r"|(?P<sep>(?:[^\w@]|_)+)"
)
_TOKEN = re.compile(r"(?P<nothing>(?!))" + _GROUP_WORD_SEP, re.IGNORECASE)
_TOKEN_WITH_ADDRESSES = re.compile(
    r"(?P<url>(?:https?|ftp)://\S*|www\.\S*)"
    r"|(?P<at>[^\s@]{0,128}@\S*)"  # e-mail addresses and anything else with an @
    + _GROUP_WORD_SEP,
    re.IGNORECASE,
)
# A house number, one to three words and a street type: the whole address goes.
_ADDRESS = re.compile(
    r"(?<![^\W_])\d{1,5}[a-z]?,?\s+(?:[^\W\d_]+\.?\s+){1,3}"
    r"(?:street|st|road|rd|avenue|ave|lane|boulevard|blvd|drive|court|terrace"
    r"|crescent|highway|hwy|parkway|pkwy|strasse|straße|str|weg|allee|platz|rue|via|calle)(?![^\W_])\.?",
    re.IGNORECASE,
)

_UNIT_NAMES = """
MM CM M KM UM NM ML L CC UL KV KVP MA MAS MAMP S SEC SECS MS US MIN MINS H HR HRS D T MT G KG MG UG
X DEG HZ KHZ MHZ MBQ KBQ GBQ MCI UCI GY CGY MGY MSV SV BPM CH SL PX MMHG
"""
_UNITS = frozenset(_UNIT_NAMES.split())
_MEASUREMENT = re.compile(r"(\d{1,4})(?:[.,](\d{1,3}))?(%|[A-Z]+)?")
_DIGIT = re.compile(r"\d")
_ORDINAL = re.compile(r"\d{1,2}(?:ST|ND|RD|TH)")
_DECIMAL = re.compile(r"(\d{1,3})[.,](\d{1,3})")
# MR weightings, CT kernels (Siemens H30s/B30f/Br40, Toshiba FC13), spine levels, b-values.
_CODE = re.compile(r"[A-Z]\d{1,2}[A-Z]{0,2}|(?:BR|BV|BL|HR|HC|QR|SA|FC|FL|YA|YB|YC)\d{2}[A-Z]?|B\d{3,4}")
_RUNS = re.compile(r"[^\W\d_]+|\d+")
_MAX_COMPOUND = 24  # longer mixes of letters and digits are IDs, not protocol names
_MAX_SHORT_NUMBER = 2  # digits of a standalone number that may stay between kept words
_MAX_MEASURED_NUMBER = 4  # digits of a number that may stay when a unit follows it
_USER_WORD = re.compile(r"[^\W_]+")
_MAX_USER_WORD = 64
_OPENERS, _CLOSERS = "([{<", ")]}>"

# Token kinds after classification.
_KEEP, _DROP, _NUMBER, _BIG_NUMBER, _SEP = range(5)


@built_once
def _vocabulary() -> frozenset[str]:
    text = resources.files("gateway.deid").joinpath("data/clean_words.txt").read_text("utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def is_vocabulary_word(word: str) -> bool:
    """Whether ``word`` (any case) is in the shipped vocabulary; user words are not consulted."""
    return word.upper() in _vocabulary()


def clean_text(text: str, extra_words: frozenset[str] = frozenset()) -> str:
    """``text`` with only vocabulary words, ``extra_words`` (upper case) and harmless numbers left.

    Kept words keep their case and the separators between them; the gaps left by removed words
    are collapsed. The result is never longer than ``text``.
    """
    if not text:
        return text
    kinds, values = _classify(text, extra_words)
    _resolve_numbers(kinds, values)
    if all(kind in (_KEEP, _SEP) for kind in kinds):
        return text
    cleaned = _balance_brackets(_join(kinds, values))
    return cleaned if len(cleaned) <= len(text) else ""


def _classify(text: str, extra: frozenset[str]) -> tuple[list[int], list[str]]:
    """The kind and text of each token; numbers are settled later, by their neighbours."""
    online = "@" in text or "://" in text or "www." in text.lower()
    tokens = (_TOKEN_WITH_ADDRESSES if online else _TOKEN).finditer(text)
    addresses = [m.span() for m in _ADDRESS.finditer(text)] if _DIGIT.search(text) else []
    vocabulary = _vocabulary()
    kinds: list[int] = []
    values: list[str] = []
    for match in tokens:
        group, value = match.lastgroup, match.group()
        if group == "sep":
            kind = _SEP
        elif addresses and any(start <= match.start() < end for start, end in addresses):
            kind = _DROP
        elif group == "word":
            kind = _classify_word(value, vocabulary, extra)
        elif group == "group":
            kind = _classify_group(value)
        else:
            kind = _DROP  # URL, e-mail, anything with an @
        kinds.append(kind)
        values.append(value)
    return kinds, values


def _classify_group(value: str) -> int:
    """Digits joined by punctuation: only a plain decimal (5.0, 2.5MM, 1.5T) may stay."""
    measurement = _MEASUREMENT.fullmatch(value.upper())
    if not measurement or measurement[2] is None or not _DECIMAL.match(value):
        return _DROP
    whole, fraction = measurement[1], measurement[2]
    if len(whole) > 3 or (len(whole) == 2 and len(fraction) == 2):
        return _DROP  # 04.03 is as likely a day and month as a number
    unit = measurement[3]
    if unit is None:
        return _NUMBER
    return _KEEP if unit == "%" or unit in _UNITS else _DROP


def _classify_word(value: str, vocabulary: frozenset[str], extra: frozenset[str]) -> int:
    upper = value.upper()
    if upper in vocabulary or upper in extra or value in extra:
        return _KEEP
    if "'" in upper:  # PATIENT'S stays; O'BRIEN and SMITH'S go
        base, _, ending = upper.partition("'")
        return _KEEP if ending == "S" and (base in vocabulary or base in extra) else _DROP
    if upper.isdigit():
        if len(upper) <= _MAX_SHORT_NUMBER:
            return _NUMBER
        return _BIG_NUMBER if len(upper) <= _MAX_MEASURED_NUMBER else _DROP
    if upper.isalpha():
        return _DROP
    if _ORDINAL.fullmatch(upper):
        return _NUMBER  # 3RD VENTRICLE keeps it, 4TH MARCH does not
    return _KEEP if _is_measurement(upper) or _is_code(upper) or _is_compound(upper, extra) else _DROP


def _is_measurement(upper: str) -> bool:
    """5MM, 120KV, 3D, 3T, 10%: a number with its unit glued on."""
    match = _MEASUREMENT.fullmatch(upper)
    return bool(match and match[2] is None and match[3] and (match[3] == "%" or match[3] in _UNITS))


def _is_code(upper: str) -> bool:
    return bool(_CODE.fullmatch(upper))


def _is_compound(upper: str, extra: frozenset[str]) -> bool:
    """T2FLAIR, 3DT1, T1FS, AX2: a mix of letters and digits that splits into kept pieces.

    A vocabulary word must be a whole run of letters, so a name is never taken apart into
    vocabulary words (CARTER is not CART + ER); a measurement or code may start or end inside
    a run (3DT1 is 3D + T1).
    """
    if len(upper) > _MAX_COMPOUND:
        return False
    edges = {0, len(upper)} | {run.start() for run in _RUNS.finditer(upper)}
    # reachable[i]: upper[:i] splits into kept pieces; after_word[i]: ... the last one a word
    reachable = [True] + [False] * len(upper)
    after_word = [False] * (len(upper) + 1)
    for end in range(1, len(upper) + 1):
        for start in range(end):
            if not reachable[start] or (start == 0 and end == len(upper)):
                continue
            piece = upper[start:end]
            if piece.isalpha() and start in edges and end in edges:
                if piece in _vocabulary() or piece in extra:
                    reachable[end] = after_word[end] = True
            elif _is_measurement(piece) or _is_code(piece):
                reachable[end] = True
            elif piece.isdigit() and len(piece) <= _MAX_SHORT_NUMBER and after_word[start] and end in edges:
                reachable[end] = True  # AX2, PHASE3: a short number after a word
    return reachable[-1]


def _resolve_numbers(kinds: list[int], values: list[str]) -> None:
    """Keep a number with a unit after it, or a short one between kept words; drop the rest."""
    words = [index for index, kind in enumerate(kinds) if kind != _SEP]
    for position in range(len(words) - 1, -1, -1):  # right to left: the next word is settled
        index = words[position]
        if kinds[index] not in (_NUMBER, _BIG_NUMBER):
            continue
        following = words[position + 1] if position + 1 < len(words) else None
        preceding = words[position - 1] if position > 0 else None
        if following is not None and values[following].upper() in _UNITS:
            kinds[index] = kinds[following] = _KEEP
        elif kinds[index] == _NUMBER and (following is not None or preceding is not None) and all(
            kinds[neighbour] == _KEEP for neighbour in (preceding, following) if neighbour is not None
        ):
            kinds[index] = _KEEP  # "SERIES 2", "Thorax^01_Routine"; not "March 4", "12 Elm"
        else:
            kinds[index] = _DROP


def _join(kinds: list[int], values: list[str]) -> str:
    """The kept words with their separators; the separators around removed words merge."""
    out: list[str] = []
    gaps = [""]  # separators since the last kept word; each removed word starts a new one
    for kind, value in zip(kinds, values, strict=True):
        if kind == _SEP:
            gaps[-1] += value
        elif kind != _KEEP:
            gaps.append("")
        else:
            if len(gaps) == 1:
                out.append(gaps[0])  # nothing removed: the original separators
            elif out:
                out.append(_merge(gaps))
            out.append(value)
            gaps = [""]
    if len(gaps) == 1:
        out.append(gaps[0])  # trailing separators, unless a removal came last
    return "".join(out)


def _merge(gaps: list[str]) -> str:
    """One separator for the separators left on both sides of removed words."""
    core = "".join(char for gap in gaps for char in gap if not char.isspace())
    for pair in ("()", "[]", "{}", "<>"):
        while pair in core:
            core = core.replace(pair, "")
    spaced = any(char.isspace() for gap in gaps for char in gap)
    if not core:
        return " " if spaced else ""
    opener = next((char for char in reversed(core) if char in _OPENERS), None)
    closer = next((char for char in core if char in _CLOSERS), None)
    chosen = opener or closer or core[0]
    before = " " if gaps[0][:1].isspace() and chosen not in _CLOSERS else ""
    after = " " if gaps[-1][-1:].isspace() and chosen not in _OPENERS else ""
    return before + chosen + after


def _balance_brackets(text: str) -> str:
    """Without the brackets whose partner went with a removed word."""
    unmatched: set[int] = set()
    open_at: list[int] = []
    for index, char in enumerate(text):
        if char in _OPENERS:
            open_at.append(index)
        elif char in _CLOSERS:
            if open_at and text[open_at[-1]] == _OPENERS[_CLOSERS.index(char)]:
                open_at.pop()
            else:
                unmatched.add(index)
    unmatched.update(open_at)
    if not unmatched:
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if index in unmatched:
            continue
        if char == " " and out and out[-1] == " " and index - 1 in unmatched:
            continue  # "CT ( HEAD" loses its bracket and one of the two spaces
        out.append(char)
    return "".join(out)


def load_user_words(path: Path | str) -> frozenset[str]:
    """The words of a user's clean-word file: one per line, ``#`` starts a comment."""
    source = Path(path)
    try:
        text = source.read_text("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}, line {bad_line}: not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read clean word list {source}: {exc.strerror or exc}") from exc
    words = set()
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        if not _USER_WORD.fullmatch(word) or word.isdigit() or len(word) > _MAX_USER_WORD:
            raise ConfigError(
                f"{source}, line {number}: expected one word of letters (digits allowed, not alone),"
                f" at most {_MAX_USER_WORD} characters, without spaces or punctuation"
            )
        words.add(word.upper())
    return frozenset(words)
