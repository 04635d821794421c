"""Coded entries inside sequences whose values are replaced (D) or cleaned (C).

A code of a standard coding scheme that the standard defines (PS3.16: DCM, SCT, LN, UCUM, ...)
names a concept, not a person, and SR templates require them: it keeps its value and gets the
standard's own meaning, so whatever the sender typed into Code Meaning is dropped. Any other code
(a local scheme such as 99MYHOSPITAL, or a value the standard does not define) is an original
value like any other text. The meanings are data (``data/code_meanings.tsv``, generated from
pydicom's concept dictionary by ``scripts/build_code_meanings.py``), loaded on first use.
"""

from __future__ import annotations

from importlib import resources

from gateway.deid.once import built_once

CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODING_SCHEME_VERSION = 0x00080103
CODE_MEANING = 0x00080104
LONG_CODE_VALUE = 0x00080119
URN_CODE_VALUE = 0x00080120
CODE_TAGS = frozenset({CODE_VALUE, CODING_SCHEME_DESIGNATOR, CODING_SCHEME_VERSION, CODE_MEANING,
                       LONG_CODE_VALUE, URN_CODE_VALUE})
# What a local code becomes: a private scheme (PS3.16 8.2: "99" prefix) with no original in it.
LOCAL_SCHEME = "99ANONYMIZED"
LOCAL_VALUE = "ANONYMIZED"


@built_once
def _meanings() -> dict[tuple[str, str], str]:
    text = resources.files("gateway.deid").joinpath("data/code_meanings.tsv").read_text("utf-8")
    meanings: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            scheme, value, meaning = line.split("\t")
            meanings.setdefault((scheme, value), meaning)
    return meanings


def standard_meaning(scheme: str, value: str) -> str | None:
    """The standard's meaning of a code, or None when the code is not a standard one."""
    scheme, value = scheme.strip(), value.strip()
    if not scheme or not value:
        return None
    meaning = _meanings().get((scheme, value))
    if meaning is None and scheme == "SRT":  # SNOMED's retired designator, same codes as SCT
        meaning = _meanings().get(("SCT", value))
    return meaning
