"""Mutated real instances never crash the engine nor leak: each is cleaned or refused.

Seed instances (pydicom's test files: CT, MR, SR, an RGB US, JPEG, deflated, big endian, implicit
VR) get a marker planted in the patient's identity, in staff names, in text at the top and nested,
and in a private element. Their encoded bytes are then mutated (truncated, VRs changed, lengths
corrupted, sequences nested deep, bad character sets, repeated or swapped elements, file meta
elements inside the data set, bytes flipped). For every mutant, ``deidentify_encoded`` returns or
raises NotDicom / InstanceError; what it returns carries no marker and reads back with pydicom,
every element decoding. Deterministic: hypothesis is derandomized and keeps no database.
"""

from __future__ import annotations

import json
import random
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from gateway.cli import main
from gateway.deid.elements import (
    DEFLATED,
    VR_32,
    Element,
    Encoding,
    deflate,
    element_bytes,
    read_encoded,
    read_meta,
)
from gateway.deid.engine import Policy, deidentify_encoded
from gateway.deid.profile import build_profile
from gateway.errors import InstanceError, NotDicom
from gateway.settings import SECRET_ENV

SECRET = b"fuzz-secret-0123456789abcdef-0001"
MARKER = "FUZZMARKER"
MARKER_ID = "FZ-99887766"
# What must never come out: the marker words, as whole words (the leak guard's unit: a mutation
# that cuts one, or glues it to another word, makes a word that identifies nobody).
FORBIDDEN = (MARKER.encode(), MARKER_ID.encode())
_FORBIDDEN_WORDS = re.compile(rb"(?<![A-Za-z0-9])(?:%s)(?![A-Za-z0-9])"
                              % b"|".join(re.escape(m) for m in FORBIDDEN))
US_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
VRS = sorted({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
              "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
              "UL", "UN", "UR", "US", "UT", "UV"})
CHARSETS = [b"ISO_IR 100\x00X", b"ISO_IR 999", b"utf-16", b"utf_32", b"ISO-IR 100", b"\\ISO 2022 IR 87",
            b"ISO 2022 IR 87\\ISO 2022 IR 159", b"", b"ISO_IR 192", b"ISO_IR 100\\\x00", b"GB18030 ",
            b"ISO 2022 IR 6\\ISO 2022 IR 100", b"\\\\\\", b"ISO_IR 6\\ISO_IR 6", b"\xff\xfe\x00"]
LENGTHS = [0, 1, 3, 7, 0xFFFF, 0xFFFE, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0x10000]
NEST_TAGS = (0x00081115, 0x00081140, 0x00082112, 0x00081250)  # sequences that hold items
# Derandomized (the same examples every run), no example database, a generous deadline per
# example (a hang fails; a slow machine does not): about 300 examples in all.
FUZZ = settings(derandomize=True, database=None, deadline=5000, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# --- seeds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    prefix: bytes  # preamble and file meta
    body: bytes  # the data set (inflated when the transfer syntax is deflated)
    encoding: Encoding
    deflated: bool
    elements: tuple[Element, ...]  # top level
    nested: tuple[Element, ...]  # every element at every level (top level included)

    def file(self, body: bytes) -> bytes:
        return self.prefix + (deflate(body) if self.deflated else body)


def _planted(ds: Dataset) -> Dataset:
    ds.PatientName = f"{MARKER}^ZED"
    ds.PatientID = MARKER_ID
    ds.OtherPatientIDs = MARKER_ID  # a second source: one mutation cannot unmake the ID
    ds.OperatorsName = f"{MARKER}^OPERATOR"
    ds.ReferringPhysicianName = f"DOCTOR^{MARKER}"
    ds.StudyDescription = f"{MARKER} STUDY"
    ds.InstitutionName = f"{MARKER} HOSPITAL"
    ds.ImageComments = f"about {MARKER} {MARKER_ID}"
    request = Dataset()
    request.RequestedProcedureDescription = f"{MARKER} PROCEDURE"
    request.ScheduledProcedureStepID = MARKER_ID
    request.RequestedProcedureID = MARKER_ID
    ds.RequestAttributesSequence = Sequence([request])
    block = ds.private_block(0x0009, "FUZZ CREATOR", create=True)
    block.add_new(0x01, "LO", MARKER)
    return ds


def _test_file(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return pydicom.dcmread(path)


def _seed_dataset(name: str) -> Dataset:
    if name == "US_rgb":  # an RGB ultrasound image: the RGB secondary capture, relabelled
        ds = _test_file("SC_rgb.dcm")
        ds.SOPClassUID = US_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
        ds.Modality = "US"
        return ds
    return _test_file(name)


def _flatten(elements: list[Element]) -> Iterator[Element]:
    for element in elements:
        yield element
        for item in element.items or []:
            yield from _flatten(item.elements)


@cache
def seed(name: str) -> Seed:
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _planted(_seed_dataset(name)).save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    instance = read_encoded(data)
    _, meta_end = read_meta(memoryview(data), 132)
    # Offsets from the data set's start (an inflated data set starts at 0 of its own buffer).
    offset = instance.body_start
    return Seed(name, data[:meta_end], bytes(instance.buffer[offset:]), instance.encoding,
                instance.transfer_syntax == DEFLATED,
                tuple(_shifted(e, offset) for e in instance.elements),
                tuple(_shifted(e, offset) for e in _flatten(instance.elements)))


def _shifted(element: Element, offset: int) -> Element:
    return Element(element.tag, element.vr, element.start - offset, element.value_start - offset,
                   element.end - offset, element.items, element.inner)


SEED_NAMES = ("CT_small.dcm", "MR_small.dcm", "test-SR.dcm", "US_rgb", "JPEG-lossy.dcm",
              "image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm")


# --- mutations (each: a seed and parameters in, the bytes of a file out) ----------------------


def truncated(s: Seed, cut: int) -> bytes:
    data = s.file(s.body)
    return data[: cut % (len(data) + 1)]


def vr_flipped(s: Seed, index: int, vr: str) -> bytes:
    if s.encoding.implicit:
        # No VR to flip: the tag's element number then, so that the dictionary gives another VR.
        # Not of an element holding a marker: under a tag no dictionary knows, the value is no
        # longer the patient's name or ID, and nothing says it identifies anyone (see the engine
        # for unknown standard attributes).
        unmarked = [e for e in s.nested if e.items is not None or not _marked(s, e)]
        element = unmarked[index % len(unmarked)]
        return s.file(_replaced(s.body, element.start + 2, bytes([VRS.index(vr) * 7])))
    element = s.nested[index % len(s.nested)]
    return s.file(_replaced(s.body, element.start + 4, vr.encode()))


def _marked(s: Seed, element: Element) -> bool:
    value = s.body[element.value_start : element.end]
    return any(marker in value for marker in FORBIDDEN)


def length_corrupted(s: Seed, index: int, length: int) -> bytes:
    element = s.nested[index % len(s.nested)]
    at = element.start + 4
    if s.encoding.implicit:
        packed = s.encoding.ul.pack(length & 0xFFFFFFFF)
    elif s.body[at : at + 2].decode("latin-1") in VR_32:
        at, packed = at + 4, s.encoding.ul.pack(length & 0xFFFFFFFF)
    else:
        at, packed = at + 2, s.encoding.us.pack(length & 0xFFFF)
    return s.file(_replaced(s.body, at, packed))


def deeply_nested(s: Seed, depth: int) -> bytes:
    """A chain of ``depth`` sequences (undefined lengths), the marker in the innermost item."""
    tag = next(t for t in NEST_TAGS if t not in {e.tag for e in s.elements})
    e = s.encoding
    start = e.tag.pack(tag >> 16, tag & 0xFFFF) + (e.ul.pack(0xFFFFFFFF) if e.implicit
                                                   else b"SQ\x00\x00" + e.ul.pack(0xFFFFFFFF))
    item = e.tag.pack(0xFFFE, 0xE000) + e.ul.pack(0xFFFFFFFF)
    ends = e.tag.pack(0xFFFE, 0xE00D) + e.ul.pack(0) + e.tag.pack(0xFFFE, 0xE0DD) + e.ul.pack(0)
    inner = element_bytes(0x0008103E, "LO", f"{MARKER} SERIES".encode(), e)
    return s.file(_inserted(s, tag, (start + item) * depth + inner + ends * depth))


def bad_charset(s: Seed, value: bytes) -> bytes:
    value = value + b" " if len(value) % 2 else value
    return s.file(_inserted(s, 0x00080005, element_bytes(0x00080005, "CS", value, s.encoding)))


def duplicated(s: Seed, index: int) -> bytes:
    element = s.elements[index % len(s.elements)]
    span = s.body[element.start : element.end]
    return s.file(s.body[: element.end] + span + s.body[element.end :])


def swapped(s: Seed, index: int) -> bytes:
    first = s.elements[index % (len(s.elements) - 1)]
    second = s.elements[index % (len(s.elements) - 1) + 1]
    body = s.body
    return s.file(body[: first.start] + body[second.start : second.end]
                  + body[first.start : first.end] + body[second.end :])


def meta_inside(s: Seed, index: int, nested: bool) -> bytes:
    """File meta elements carrying the marker, inside the data set (at the top or in an item)."""
    meta = (element_bytes(0x00020013, "SH", MARKER.encode(), s.encoding)
            + element_bytes(0x00020016, "AE", MARKER.encode(), s.encoding))
    if nested:
        items = [e for e in s.nested if e.items and _undefined_items(s, e)]
        if items:
            sequence = items[index % len(items)]
            at = sequence.items[0].elements[0].start if sequence.items and \
                sequence.items[0].elements else sequence.value_start + 8
            return s.file(s.body[:at] + meta + s.body[at:])
    position = 0 if index % 3 == 0 else s.elements[index % len(s.elements)].end
    return s.file(s.body[:position] + meta + s.body[position:])


def byte_flipped(s: Seed, position: int, value: int) -> bytes:
    position %= len(s.body)
    return s.file(_replaced(s.body, position, bytes([value])))


def _undefined_items(s: Seed, element: Element) -> bool:
    header = s.body[element.value_start : element.value_start + 8]
    return len(header) == 8 and s.encoding.ul.unpack_from(header, 4)[0] == 0xFFFFFFFF


def _replaced(body: bytes, at: int, new: bytes) -> bytes:
    return body[:at] + new + body[at + len(new) :]


def _inserted(s: Seed, tag: int, encoded: bytes) -> bytes:
    """``encoded`` at its place among the top-level elements (in place of one of that tag)."""
    body = s.body
    for element in s.elements:
        if element.tag == tag:
            return body[: element.start] + encoded + body[element.end :]
        if element.tag > tag:
            return body[: element.start] + encoded + body[element.start :]
    return body + encoded


# --- what every mutant must satisfy ----------------------------------------------------------


def clean_bytes(output: bytes) -> bytes:
    """The output with a deflated data set inflated (the marker would hide in the stream)."""
    _, body_start = read_meta(memoryview(output), 132)
    dataset = pydicom.dcmread(BytesIO(output), force=False, stop_before_pixels=True)
    if dataset.file_meta.TransferSyntaxUID == DEFLATED:
        return output[:body_start] + zlib.decompressobj(-zlib.MAX_WBITS).decompress(output[body_start:])
    return output


def every_value(ds: Dataset) -> Iterator[object]:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from every_value(item)
        else:
            value = element.value
            yield value if isinstance(value, bytes) else str(value)


POLICIES = {
    "basic": Policy(build_profile()),
    "options": Policy(build_profile(("retain_safe_private", "retain_long_modified_dates",
                                     "clean_descriptors", "clean_structured_content"))),
}


def check(data: bytes, policy: Policy = POLICIES["basic"]) -> str:
    """Cleaned or refused, as the contract says; the output clean and readable. The outcome."""
    try:
        result = deidentify_encoded(data, policy, SECRET)
    except (NotDicom, InstanceError) as exc:
        return type(exc).__name__
    output = result.data
    found = _FORBIDDEN_WORDS.search(clean_bytes(output))
    assert found is None, f"{found.group()!r} survives"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(BytesIO(output), force=False)
        list(every_value(ds.file_meta))
        list(every_value(ds))
    assert not any(tag >> 16 == 0x0002 for tag in ds.keys())
    read_encoded(output)  # the gateway's own strict reader takes it too (a release reads it again)
    return "cleaned"


def test_the_seeds_themselves_are_cleaned() -> None:
    assert {name: check(seed(name).file(seed(name).body)) for name in SEED_NAMES} == {
        name: "cleaned" for name in SEED_NAMES}


seeds = st.sampled_from(SEED_NAMES).map(seed)
policies = st.sampled_from(sorted(POLICIES))
anywhere = st.integers(0, 2**20)


@fuzz(60)
@given(policies, seeds, st.one_of(anywhere, st.integers(0, 400)))
def test_cut_anywhere(policy: str, s: Seed, cut: int) -> None:
    check(truncated(s, cut), POLICIES[policy])


@fuzz(60)
@given(policies, seeds, anywhere, st.sampled_from(VRS))
def test_a_vr_changed(policy: str, s: Seed, index: int, vr: str) -> None:
    check(vr_flipped(s, index, vr), POLICIES[policy])


@fuzz(50)
@given(policies, seeds, anywhere, st.one_of(st.sampled_from(LENGTHS), st.integers(0, 2**32 - 1)))
def test_a_length_corrupted(policy: str, s: Seed, index: int, length: int) -> None:
    check(length_corrupted(s, index, length), POLICIES[policy])


@fuzz(20)
@given(policies, seeds, st.one_of(st.integers(1, 40), st.sampled_from([31, 32, 33, 500, 5000])))
def test_sequences_nested_deep(policy: str, s: Seed, depth: int) -> None:
    outcome = check(deeply_nested(s, depth), POLICIES[policy])
    if depth > 32:
        assert outcome == "MalformedInstance"


@fuzz(30)
@given(policies, seeds, st.one_of(st.sampled_from(CHARSETS), st.binary(max_size=24)))
def test_a_bad_character_set(policy: str, s: Seed, value: bytes) -> None:
    check(bad_charset(s, value), POLICIES[policy])


@fuzz(50)
@given(policies, seeds, anywhere, st.sampled_from(["duplicated", "swapped", "meta", "nested meta"]))
def test_elements_repeated_swapped_or_misplaced(policy: str, s: Seed, index: int, how: str) -> None:
    mutant = {"duplicated": lambda: duplicated(s, index), "swapped": lambda: swapped(s, index),
              "meta": lambda: meta_inside(s, index, nested=False),
              "nested meta": lambda: meta_inside(s, index, nested=True)}[how]()
    outcome = check(mutant, POLICIES[policy])
    if how in ("duplicated", "swapped"):
        assert outcome == "MalformedInstance"


@fuzz(40)
@given(policies, seeds, anywhere, st.integers(0, 255))
def test_a_byte_changed(policy: str, s: Seed, position: int, value: int) -> None:
    check(byte_flipped(s, position, value), POLICIES[policy])


# --- the anonymize command over a folder of mutants --------------------------------------------

MUTATIONS: list[Callable[[Seed, random.Random], bytes]] = [
    lambda s, r: truncated(s, r.randrange(200, len(s.body))),
    lambda s, r: vr_flipped(s, r.randrange(10**6), r.choice(VRS)),
    lambda s, r: length_corrupted(s, r.randrange(10**6), r.choice(LENGTHS)),
    lambda s, r: deeply_nested(s, r.choice([3, 40, 3000])),
    lambda s, r: bad_charset(s, r.choice(CHARSETS)),
    lambda s, r: duplicated(s, r.randrange(10**6)),
    lambda s, r: meta_inside(s, r.randrange(10**6), nested=r.random() < 0.5),
    lambda s, r: byte_flipped(s, r.randrange(10**6), r.randrange(256)),
]


def test_anonymize_takes_a_folder_of_mutants_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("DICOM_GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the project's var/
    rng = random.Random(20240611)
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for number in range(32):
        s = seed(SEED_NAMES[number % len(SEED_NAMES)])
        (src / f"mutant{number:02d}.dcm").write_bytes(MUTATIONS[number % len(MUTATIONS)](s, rng))
    (tmp_path / "secret.key").write_text("ef" * 32)
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
                      f'secret_file = "{tmp_path / "secret.key"}"\n')
    code = main(["anonymize", "--config", str(config), "--json", "--workers", "1", str(src), str(dst)])
    summary = json.loads(capsys.readouterr().out)
    assert summary["files_in"] == 32
    assert summary["written"] + summary["quarantined"] + summary["skipped"] == 32
    assert summary["quarantined"] > 0 and code == 1
    outputs = list(dst.rglob("*.dcm")) if dst.exists() else []
    assert len(outputs) == summary["written"] - summary["duplicates"]
    assert [p.name for p in dst.rglob(".*")] == []  # no temporaries left
    for path in outputs:
        assert _FORBIDDEN_WORDS.search(clean_bytes(path.read_bytes())) is None, path.name


def test_struct_offsets_of_the_seeds_match_their_elements() -> None:
    """The mutations address elements by the offsets read from the seeds: check one."""
    s = seed("CT_small.dcm")
    element = next(e for e in s.elements if e.tag == 0x00100020)
    (length,) = struct.unpack_from("<H", s.body, element.start + 6)
    assert s.body[element.value_start : element.value_start + length].rstrip() == MARKER_ID.encode()
