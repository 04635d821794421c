"""Writes gateway/deid/data/code_meanings.tsv: the meaning of every standard concept code that
pydicom's SR concept dictionary knows (PS3.16 coding schemes DCM, SCT, LN, UCUM, ...).

The engine uses it inside sequences whose values are replaced (D) or cleaned (C): a standard
code keeps its value and is given its meaning from the standard, so an SR tree stays valid while
whatever the sender wrote in Code Meaning is dropped. Run it when pydicom is upgraded:

    .venv/bin/python scripts/build_code_meanings.py
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pydicom
from pydicom.sr._concepts_dict import concepts

TARGET = Path(__file__).resolve().parent.parent / "gateway" / "deid" / "data" / "code_meanings.tsv"


def rows() -> list[tuple[str, str, str]]:
    found = set()
    for scheme, by_keyword in concepts.items():
        for codes in by_keyword.values():
            for value, (meaning, _cids) in codes.items():
                if "\t" not in meaning and "\n" not in meaning:
                    found.add((scheme, value, meaning))
    return sorted(found)


def main() -> None:
    header = (f"# Standard concept codes and their meanings (scheme, value, meaning), from pydicom "
              f"{pydicom.__version__}'s SR concept dictionary (PS3.16); written "
              f"{datetime.date.today().isoformat()} by scripts/build_code_meanings.py\n")
    body = "".join(f"{s}\t{v}\t{m}\n" for s, v, m in rows())
    TARGET.write_text(header + body, encoding="utf-8")


if __name__ == "__main__":
    main()
