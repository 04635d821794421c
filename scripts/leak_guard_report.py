"""How often the leak guard fires on the acceptance corpus, per E.3 option.

Builds the marker corpus (tests/corpus.py), runs ``dicom-gateway anonymize`` on it under the
Basic profile and under each option, and prints per run: instances written, quarantined by the
leak guard (LeakDetected, with the element paths it named), quarantined for other reasons, and
the planted values that survived where Table E.1-1 removes them (by cause).

    .venv/bin/python scripts/leak_guard_report.py [--keep DIR] [OPTION ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))
sys.path.insert(0, str(PROJECT_ROOT))

from corpus import (  # noqa: E402 - after the path set-up above
    AnonymizeRun,
    CorpusInstance,
    leaked_markers,
    option_keys,
    run_anonymize,
    write_corpus,
)

from gateway.deid.uids import keyed_uid  # noqa: E402
from gateway.errors import LeakDetected  # noqa: E402

SECRET_HEX = bytes(range(32)).hex()
_INDEX = re.compile(r"\[\d+\]")


def report_run(run: AnonymizeRun, instances: list[CorpusInstance]) -> None:
    label = "+".join(run.options) or "basic"
    guard = {n: r for n, r in run.quarantine_reasons().items()
             if r.startswith(f"{LeakDetected.reason}:")}
    other = {n: r for n, r in run.quarantine_reasons().items() if n not in guard}
    print(f"== {label}: {len(run.outputs)}/{len(instances)} written, "
          f"leak guard fired {len(guard)}x, other quarantine {len(other)}x")
    for name, reason in sorted(guard.items()):
        print(f"   leak guard  {name}: {reason}")
    for name, reason in sorted(other.items()):
        print(f"   quarantined {name}: {reason}")
    causes: Counter[str] = Counter()
    for instance in instances:
        output = run.outputs.get(instance.name)
        if output is None:
            continue
        for marker in leaked_markers(output.read_bytes(), instance, run.options):
            action, by = marker.governing(run.options)
            leaf = marker.path.rsplit(".", 1)[-1]
            decider = _INDEX.sub("", by).rsplit(".", 1)[-1]
            causes[f"{action} by {decider}: {leaf} [{marker.vr}] ({marker.where})"] += 1
    for cause, count in causes.most_common():
        print(f"   survived {count:4d}  {cause}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("options", nargs="*", help="E.3 option keys (default: basic + each option)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    sets = [tuple(o.split("+")) for o in args.options] or [(), *((k,) for k in option_keys())]
    with tempfile.TemporaryDirectory(prefix="leak-guard-") as temp:
        root = args.keep or Path(temp)
        src = root / "src"
        instances = write_corpus(src)
        secret = bytes.fromhex(SECRET_HEX)
        fired = 0
        for options in sets:
            work = root / ("-".join(options) or "basic")
            run = run_anonymize(src, work, options, SECRET_HEX, instances,
                                lambda uid: keyed_uid(secret, uid))
            report_run(run, instances)
            fired += sum(1 for r in run.quarantine_reasons().values()
                         if r.startswith(f"{LeakDetected.reason}:"))
    print(f"leak guard fired {fired}x over {len(sets)} runs of {len(instances)} instances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
