"""Run dcmanon (a Rust DICOM anonymizer) over a folder, for the offline benchmark.

dcmanon's Python package has no command line and no folder API: only ``Anonymizer().anonymize(path)``,
which returns the anonymized file's bytes. This is the plain loop a user would write: each file
under SRC, with dcmanon's default settings, to the same relative path under DST, in one process
(its calls hold the GIL, so threads would not help).

Usage: python bench/dcmanon_folder.py SRC DST
Prints "wrote N of M" and exits 1 when any file failed (the others are still written).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dcmanon import AnonymizationError, Anonymizer


def anonymize_folder(src: Path, dst: Path) -> tuple[int, int]:
    """Anonymize every file under ``src`` into ``dst``; (written, files)."""
    anonymizer = Anonymizer()
    written = files = 0
    for folder, _, names in os.walk(src):
        target_folder = dst / Path(folder).relative_to(src)
        target_folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            files += 1
            try:
                data = anonymizer.anonymize(os.path.join(folder, name))
            except (AnonymizationError, OSError) as exc:
                print(f"{name}: {type(exc).__name__}", file=sys.stderr)
                continue
            (target_folder / name).write_bytes(data)
            written += 1
    return written, files


def main() -> int:
    written, files = anonymize_folder(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {written} of {files}")
    return 0 if written == files else 1


if __name__ == "__main__":
    sys.exit(main())
