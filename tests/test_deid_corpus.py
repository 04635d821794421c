"""Acceptance test of de-identification on realistic, richly populated data.

A corpus of real instances (``corpus.SOURCES``: CT, MR, enhanced MR, US, SR, RT, ECG, PET, NM,
SEG, secondary capture; explicit/implicit VR, big endian, deflated, JPEG, JPEG-LS, JPEG 2000, RLE;
GE, Siemens, Philips, SonoSite, Mortara private blocks) with a unique marker planted in every
Table E.1-1 attribute at every nesting level goes through the real ``dicom-gateway anonymize``
under the Basic profile alone and under each E.3 option. Then:

1. every instance is written, none quarantined;
2. no marker that the table (under the options in force) says must go is found in any output's
   bytes;
3. dciodvfy finds no error in an output that it did not find in the input;
4. UIDs are replaced consistently across files and runs, and references between instances match;
5. Pixel Data is byte-for-byte unchanged.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from corpus import (
    AnonymizeRun,
    CorpusInstance,
    Marker,
    element_at,
    leaked_markers,
    locate,
    markers_found,
    option_keys,
    path_text,
    run_anonymize,
    searchable,
    table_rows,
    write_corpus,
)
from pydicom.dataset import Dataset

from gateway.deid.uids import keyed_uid

SECRET_HEX = bytes(range(32)).hex()
OPTION_SETS: list[tuple[str, ...]] = [(), *((key,) for key in option_keys())]
OPTION_IDS = ["basic", *option_keys()]
BASIC: tuple[str, ...] = ()
MAX_LINES = 60  # per failure message; the rest is counted


def expected_uid(uid: str) -> str:
    return keyed_uid(bytes.fromhex(SECRET_HEX), uid)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusInstance]]:
    src = tmp_path_factory.mktemp("corpus") / "src"
    return src, write_corpus(src)


Runner = Callable[[tuple[str, ...], str], AnonymizeRun]


@pytest.fixture(scope="session")
def anonymized(corpus: tuple[Path, list[CorpusInstance]],
               tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """The corpus anonymized under a set of options (each run once per session and label)."""
    src, instances = corpus
    done: dict[tuple[tuple[str, ...], str], AnonymizeRun] = {}

    def run(options: tuple[str, ...], label: str = "") -> AnonymizeRun:
        if (options, label) not in done:
            work = tmp_path_factory.mktemp(f"run-{'-'.join(options) or 'basic'}{label}")
            done[options, label] = run_anonymize(src, work, options, SECRET_HEX, instances,
                                                 expected_uid)
        return done[options, label]

    return run


def by_name(instances: list[CorpusInstance]) -> dict[str, CorpusInstance]:
    return {i.name: i for i in instances}


def read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def capped(lines: list[str]) -> str:
    shown = lines[:MAX_LINES]
    more = len(lines) - len(shown)
    return "\n".join(shown + ([f"... and {more} more"] if more > 0 else []))


# --- the corpus itself -----------------------------------------------------------------------


def test_corpus_plants_every_listed_attribute_at_every_level(corpus):
    """The infrastructure: each instance has a marker for every plantable Table E.1-1 row at
    the top and inside the 1-, 2- and 3-deep generic sequences."""
    _, instances = corpus
    nest_depths = {0, 1, 2, 3}
    missing = []
    for instance in instances:
        depths: dict[int, set[int]] = defaultdict(set)
        for marker in instance.markers:
            if marker.where == "public":
                depths[marker.tag].add(sum(1 for t, _ in marker.ancestors if t in _NEST_TAGS))
        for tag, row in table_rows().items():
            if tag >> 16 in (0x0000, 0x0002) or row["vr"] in ("AS", "US"):
                continue  # command / meta elements; values that cannot be unique
            if row["vr"] == "SQ":
                continue  # sequences hold markers in their items (checked by their paths)
            lacking = nest_depths - depths[tag]
            if lacking:
                missing.append(f"{instance.name}: {row['keyword'] or row['pattern']} "
                               f"lacks depths {sorted(lacking)}")
    assert not missing, capped(missing)


_NEST_TAGS = frozenset(int(pydicom.tag.Tag(k)) for k in ("ReferencedSeriesSequence",
                                                        "ReferencedInstanceSequence",
                                                        "ReferencedSOPSequence"))


def test_every_marker_is_found_in_its_input(corpus):
    """The grep finds what was planted: otherwise "no leak" would prove nothing."""
    src, instances = corpus
    lost = []
    for instance in instances:
        data = (src / instance.name).read_bytes()
        found = markers_found(searchable(data), instance.markers)
        lost += [f"{instance.name}: {m.path} [{m.vr}] {m.key!r}" for m in instance.markers
                 if m.key not in found]
    assert not lost, capped(lost)


def test_corpus_covers_the_promised_variety(corpus):
    _, instances = corpus
    syntaxes = {str(i.dataset.file_meta.TransferSyntaxUID) for i in instances}
    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                   "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80",
                   "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"):
        assert syntax in syntaxes, f"no instance in transfer syntax {syntax}"
    charsets = {str(i.dataset.get("SpecificCharacterSet", "")) for i in instances}
    assert {"ISO_IR 100", "ISO_IR 192"} <= charsets
    places = {m.where for i in instances for m in i.markers}
    assert places == {"public", "private", "meta", "identity"}


# --- 1. everything written -------------------------------------------------------------------


@pytest.mark.parametrize("options", OPTION_SETS, ids=OPTION_IDS)
def test_every_instance_is_written(corpus, anonymized, options):
    _, instances = corpus
    run = anonymized(options)
    reasons = run.quarantine_reasons()
    problems = [f"quarantined {name}: {reason}" for name, reason in sorted(reasons.items())]
    problems += [f"not written (and not quarantined): {i.name}" for i in instances
                 if i.name not in run.outputs and i.name not in reasons]
    problems += [f"output not attributable to an instance: {p.name}" for p in run.unattributed]
    assert not problems, (f"{'+'.join(options) or 'basic'}: exit status {run.status}\n"
                          + capped(problems))


# --- 2. no marker survives where the table says it must go --------------------------------------


def leak_lines(instance: CorpusInstance, output: Path, options: tuple[str, ...]) -> list[str]:
    data = output.read_bytes()
    leaked = leaked_markers(data, instance, options)
    places = locate(data, {m.key for m in leaked}) if leaked else {}
    return [f"{m.describe(options)}: found in output at {', '.join(places[m.key][:3])}"
            for m in leaked]


@pytest.mark.parametrize("options", OPTION_SETS, ids=OPTION_IDS)
def test_no_marker_survives_where_the_table_removes_it(corpus, anonymized, options):
    _, instances = corpus
    run = anonymized(options)
    leaks: list[str] = []
    causes: Counter[str] = Counter()
    for instance in instances:
        output = run.outputs.get(instance.name)
        if output is None:
            continue  # reported by test_every_instance_is_written
        for line in leak_lines(instance, output, options):
            leaks.append(line)
            causes[_cause(line)] += 1
    summary = "\n".join(f"{n:5d}  {cause}" for cause, n in causes.most_common())
    assert not leaks, (f"{'+'.join(options) or 'basic'}: {len(leaks)} planted values survive\n"
                       f"by cause:\n{summary}\n\n{capped(leaks)}")


def _cause(line: str) -> str:
    """'action A on <attribute>' with indices dropped: leaks of one kind counted together."""
    match = re.search(r"(?:public|private|meta|the patient's name embedded in) (\S+) \[(\S+)\] "
                      r"action (\S+)(?: \(decided by (\S+)\))?", line)
    if match is None:
        return line
    path, vr, action, by = match.groups()
    leaf = re.sub(r"\[\d+\]", "", path).split(".")[-1]
    return f"{action} by {by or leaf}: {leaf} [{vr}]"


# --- 3. dciodvfy -------------------------------------------------------------------------------

# Values quoted in a message ("= <20010203>", "= '5' (0x35)", "<0x1f>"): the planted markers and
# their replacements differ by design, the finding itself is what is compared.
_VALUE = re.compile(r" ?= <[^>]*>| ?= '[^']*' \(0x[0-9a-fA-F]+\)|<0x[0-9a-fA-F]+>")


def dciodvfy_errors(path: Path) -> tuple[Counter[str], bool]:
    """Error lines (values stripped) and whether dciodvfy could read the file at all."""
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True,
                          errors="replace", timeout=60)
    text = proc.stdout + proc.stderr
    # A crash (an assertion on some pixel encodings) ends with a signal; a refused file says so.
    readable = "Dicom dataset read failed" not in text and proc.returncode >= 0
    errors = Counter(_VALUE.sub("", line).strip() for line in text.splitlines()
                     if line.startswith("Error - "))
    return errors, readable


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (dicom3tools) is not installed: scripts/install-system-deps.sh")
def test_dciodvfy_finds_no_new_error(corpus, anonymized):
    """Basic profile only (each option would repeat most of the same findings)."""
    src, instances = corpus
    run = anonymized(BASIC)
    pairs = [(i.name, src / i.name, run.outputs[i.name]) for i in instances if i.name in run.outputs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: (p[0], dciodvfy_errors(p[1]), dciodvfy_errors(p[2])),
                                pairs))
    regressions = []
    for name, (before, read_in), (after, read_out) in results:
        if not read_in:
            continue  # dciodvfy cannot read this kind of file (deflated, 32-bit dose): nothing to compare
        if not read_out:
            regressions.append(f"{name}: dciodvfy cannot read the output")
            continue
        regressions += [f"{name}: {line}" + (f" (x{n})" if n > 1 else "")
                        for line, n in sorted((after - before).items())]
    assert not regressions, capped(regressions)


# --- 4. UIDs -----------------------------------------------------------------------------------


def replaced_uid_markers(instance: CorpusInstance) -> Iterator[Marker]:
    """UID markers the Basic profile replaces in place (U on the leaf, its sequences kept)."""
    for marker in instance.markers:
        if marker.family == "uid" and marker.where == "public" and marker.governing(BASIC)[0] == "U":
            yield marker


def test_uids_are_replaced_consistently_across_files_and_runs(corpus, anonymized):
    _, instances = corpus
    first, second = anonymized(BASIC), anonymized(BASIC, "-again")
    assert sorted(p.name for p in first.outputs.values()) == sorted(
        p.name for p in second.outputs.values()), "two runs with one secret name outputs alike"
    seen: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    problems = []
    for label, run in (("run 1", first), ("run 2", second)):
        for instance in instances:
            output = run.outputs.get(instance.name)
            if output is None:
                continue
            ds = read(output)
            for marker in replaced_uid_markers(instance):
                elem = element_at(ds, marker.ancestors, marker.tag)
                if elem is None:
                    problems.append(f"{label} {instance.name}: {marker.path} [U] is gone")
                    continue
                new = str(elem.value[0] if elem.VM > 1 else elem.value)
                original = marker.key.decode()
                if new == original:
                    problems.append(f"{label} {instance.name}: {marker.path} [U] not replaced")
                seen[original][new].append(f"{label} {instance.name}: {marker.path}")
    for outputs in seen.values():
        if len(outputs) > 1:
            places = "; ".join(f"{new[:24]}... at {', '.join(where[:2])}"
                               for new, where in outputs.items())
            problems.append(f"one original UID became {len(outputs)} different UIDs: {places}")
    assert not problems, capped(problems)


def test_references_between_instances_still_match(corpus, anonymized):
    _, instances = corpus
    run = anonymized(BASIC)
    named = by_name(instances)
    outputs = {name: read(path) for name, path in run.outputs.items()}
    problems = []
    for instance in instances:
        for ancestors, tag, target, target_tag in instance.references:
            where = f"{instance.name}: {path_text(ancestors, tag)} -> {target} {path_text((), target_tag)}"
            planted = element_at(named[instance.name].dataset, ancestors, tag)
            aimed = named[target].dataset.get(target_tag)
            assert planted is not None and aimed is not None and planted.value == aimed.value, (
                f"corpus error: {where} does not match in the input")
            if instance.name not in outputs or target not in outputs:
                problems.append(f"{where}: an output is missing")
                continue
            got = element_at(outputs[instance.name], ancestors, tag)
            want = outputs[target].get(target_tag)
            if got is None or want is None:
                problems.append(f"{where}: {'reference' if got is None else 'target'} is gone")
            elif got.value != want.value:
                problems.append(f"{where}: the reference no longer matches")
    assert not problems, capped(problems)


# --- 5. pixel data -----------------------------------------------------------------------------


def pixel_bytes(path: Path) -> bytes | None:
    ds = read(path)
    return bytes(ds["PixelData"].value) if "PixelData" in ds else None


@pytest.mark.parametrize("options", [BASIC, ("retain_uids",), ("clean_graphics",)],
                         ids=["basic", "retain_uids", "clean_graphics"])
def test_pixel_data_is_unchanged(corpus, anonymized, options):
    src, instances = corpus
    run = anonymized(options)
    changed = []
    for instance in instances:
        output = run.outputs.get(instance.name)
        if output is None:
            continue
        before, after = pixel_bytes(src / instance.name), pixel_bytes(output)
        if before != after:
            state = "missing" if after is None else f"{len(before or b'')} -> {len(after)} bytes, differs"
            changed.append(f"{instance.name}: PixelData {state}")
    assert not changed, "\n".join(changed)



# --- the options keep what they promise ----------------------------------------------------------


@pytest.mark.parametrize("options", OPTION_SETS[1:], ids=OPTION_IDS[1:])
def test_option_keeps_what_the_table_keeps(corpus, anonymized, options):
    """Top-level attributes an option turns to K (from something else under the Basic profile)
    arrive unchanged: an option that keeps nothing would pass every leak check."""
    _, instances = corpus
    run = anonymized(options)
    lost = []
    for instance in instances:
        output = run.outputs.get(instance.name)
        if output is None:
            continue
        kept = [m for m in instance.markers
                if m.where == "public" and not m.ancestors and m.governing(options)[0] == "K"
                and m.governing(BASIC)[0] != "K"]
        found = markers_found(searchable(output.read_bytes()), kept)
        lost += [f"{instance.name}: {m.path} [{m.vr}] (basic {m.governing(BASIC)[0]}) lost"
                 for m in kept if m.key not in found]
    assert not lost, f"{'+'.join(options)}: {len(lost)} kept values lost\n" + capped(lost)
