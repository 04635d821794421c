"""Bad input is quarantined or cleaned, never a crash: the cases the fuzzer stands for, one by one.

Instances are built here byte by byte (explicit VR little endian unless said otherwise), so each
test states exactly what is wrong with its input.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway import anonymize
from gateway.anonymize import Anonymizer, anonymize_tree, clean_file
from gateway.cli import main
from gateway.deid import engine
from gateway.deid.elements import (
    CHARSET_TERMS,
    EXPLICIT_BIG,
    EXPLICIT_LITTLE,
    IMPLICIT_LITTLE,
    MAX_DEPTH,
    Encoding,
    element_bytes,
    file_meta,
    sequence_bytes,
)
from gateway.deid.engine import Policy, deidentify_dataset, deidentify_encoded
from gateway.deid.profile import build_profile
from gateway.errors import ConflictingInstance, MalformedInstance, NotDicom
from gateway.quarantine import Quarantine
from gateway.settings import SECRET_ENV

SECRET = b"robustness-secret-0123456789abcdef"
SYNTAX = {EXPLICIT_LITTLE: "1.2.840.10008.1.2.1", IMPLICIT_LITTLE: "1.2.840.10008.1.2",
          EXPLICIT_BIG: "1.2.840.10008.1.2.2"}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE_UID = "1.2.826.0.1.3680043.2.1125.9.1"
MARKER = b"MARKERVALUE"

Elements = dict[int, tuple[str, bytes]]  # tag -> (VR, encoded value)


def text(value: str) -> bytes:
    raw = value.encode("latin-1")
    return raw + b" " if len(raw) % 2 else raw


def uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def us(value: int, encoding: Encoding = EXPLICIT_LITTLE) -> bytes:
    return encoding.us.pack(value)


BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"  # an IOD without an image


def base() -> Elements:
    """What every instance needs (of an IOD without pixels: a CT without them is refused)."""
    return {
        0x00080016: ("UI", uid(BASIC_TEXT_SR)),
        0x00080018: ("UI", uid(SOP_INSTANCE_UID)),
        0x00080060: ("CS", text("CT")),
        0x00100010: ("PN", text("Doe^Jane")),
        0x00100020: ("LO", text("PID-12345")),
        0x0020000D: ("UI", uid("1.2.826.0.1.3680043.2.1125.9.2")),
        0x0020000E: ("UI", uid("1.2.826.0.1.3680043.2.1125.9.3")),
    }


def image(rows: int = 4, columns: int = 4, bits: int = 8, samples: int = 1,
          encoding: Encoding = EXPLICIT_LITTLE) -> Elements:
    return {**base(), 0x00080016: ("UI", uid(CT_IMAGE_STORAGE)), 0x00280002: ("US", us(samples, encoding)),
            0x00280004: ("CS", text("MONOCHROME2" if samples == 1 else "RGB")),
            0x00280010: ("US", us(rows, encoding)), 0x00280011: ("US", us(columns, encoding)),
            0x00280100: ("US", us(bits, encoding)), 0x00280101: ("US", us(bits, encoding)),
            0x00280102: ("US", us(bits - 1, encoding)), 0x00280103: ("US", us(0, encoding))}


def body(elements: Elements, encoding: Encoding = EXPLICIT_LITTLE, extra: Iterable[bytes] = ()) -> bytes:
    """The data set, in tag order; ``extra`` (already encoded) is appended as it is."""
    encoded = [element_bytes(tag, vr, value, encoding) if vr != "raw" else value
               for tag, (vr, value) in sorted(elements.items())]
    return b"".join([*encoded, *extra])


def part10(data_set: bytes, syntax: str = SYNTAX[EXPLICIT_LITTLE]) -> bytes:
    meta = file_meta(CT_IMAGE_STORAGE, SOP_INSTANCE_UID, syntax, "1.2.3", "TEST")
    return b"\x00" * 128 + b"DICM" + meta + data_set


def instance(elements: Elements, encoding: Encoding = EXPLICIT_LITTLE) -> bytes:
    return part10(body(elements, encoding), SYNTAX[encoding])


def deidentify(data: bytes, **policy: object) -> engine.Result:
    return deidentify_encoded(data, Policy(build_profile(), **policy), SECRET)  # type: ignore[arg-type]


def refusal(data: bytes) -> str:
    with pytest.raises(MalformedInstance) as caught:
        deidentify(data)
    assert caught.value.reason == "malformed"
    return str(caught.value)


def in_sequence(item: list[bytes]) -> bytes:
    return sequence_bytes(0x00081115, [list(item)], EXPLICIT_LITTLE)


def nested(depth: int, encoding: Encoding = EXPLICIT_LITTLE) -> bytes:
    """ReferencedSeriesSequence holding itself ``depth`` times, an InstanceNumber innermost."""
    items: list[list[bytes | memoryview]] = [[element_bytes(0x00200013, "IS", text("7"), encoding)]]
    for _ in range(depth - 1):
        items = [[sequence_bytes(0x00081115, items, encoding)]]
    return sequence_bytes(0x00081115, items, encoding)


# --- anything unexpected is a quarantine, not a crash -----------------------------------------


def test_an_unexpected_error_in_the_engine_is_a_malformed_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object) -> None:
        raise RuntimeError("value PID-12345 from the data")

    monkeypatch.setattr(engine._Instance, "deidentify", broken)
    assert refusal(instance(base())) == "cannot read or de-identify the instance (RuntimeError)"
    message = r"^cannot read or de-identify the instance \(RuntimeError\)$"
    with pytest.raises(MalformedInstance, match=message):
        deidentify_dataset(body(base()), SYNTAX[EXPLICIT_LITTLE], Policy(build_profile()), SECRET)


def test_memory_error_is_not_taken_for_a_bad_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(self: object) -> None:
        raise MemoryError

    monkeypatch.setattr(engine._Instance, "deidentify", exhausted)
    with pytest.raises(MemoryError):
        deidentify(instance(base()))


def test_not_dicom_stays_not_dicom() -> None:
    with pytest.raises(NotDicom):
        deidentify(b"plain text, not DICOM")


# --- nesting depth --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [EXPLICIT_LITTLE, IMPLICIT_LITTLE, EXPLICIT_BIG])
def test_sequences_nested_to_the_limit_are_cleaned(encoding: Encoding) -> None:
    data = part10(body({**base(), 0x00081115: ("raw", nested(MAX_DEPTH, encoding))}, encoding),
                  SYNTAX[encoding])
    ds = deidentify(data).dataset
    depth, item = 0, ds
    while "ReferencedSeriesSequence" in item:
        item, depth = item.ReferencedSeriesSequence[0], depth + 1
    assert depth == MAX_DEPTH and item.InstanceNumber == 7


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
def test_sequences_nested_deeper_are_malformed(depth: int) -> None:
    data = part10(body({**base(), 0x00081115: ("raw", nested(depth))}))
    assert refusal(data) == f"sequences nested deeper than {MAX_DEPTH} levels"


# --- VRs and values that contradict the data dictionary ---------------------------------------

CONTRADICTIONS = {
    "a UID as a float": (0x00080018, "FL", b"\x00\x00\x80\x3f"),
    "a sequence as OB": (0x00081115, "OB", b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),
    "a sequence as LO": (0x00081115, "LO", text("NOT A SEQUENCE")),
    "text as numbers": (0x00081030, "US", b"\x01\x00"),
    "text as bytes": (0x00081030, "OB", MARKER + b"\x00"),
    "a decimal string as an integer": (0x00180050, "UL", b"\x00\x00\x00\x00"),
    "a float as a double": (0x00181318, "FL", b"\x00\x00\x80\x3f"),
    "a number as text": (0x00280010, "IS", text("512")),
    "the character set as a date": (0x00080005, "DA", text("ISO_IR 100")),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_a_vr_that_changes_the_meaning_is_malformed(case: str) -> None:
    tag, vr, value = CONTRADICTIONS[case]
    elements = {**base(), tag: (vr, value)}
    assert refusal(instance(elements)) == (
        f"({tag >> 16:04X},{tag & 0xFFFF:04X}): the VR {vr} contradicts the data dictionary")


@pytest.mark.parametrize(("tag", "vr", "length"), [
    (0x00181310, "US", 3),  # AcquisitionMatrix
    (0x00189087, "FD", 12),  # DiffusionBValue
    (0x00189089, "FD", 20),  # DiffusionGradientOrientation
    (0x00280106, "SS", 1),  # SmallestImagePixelValue
    (0x00191010, "FL", 6),  # a private element: its VR says 4-byte floats
])
def test_a_value_not_a_multiple_of_its_vr_size_is_malformed(tag: int, vr: str, length: int) -> None:
    elements = {**base(), tag: (vr, b"\x01" * length)}
    assert refusal(instance(elements)) == (
        f"({tag >> 16:04X},{tag & 0xFFFF:04X}): the value length is not a multiple of its VR {vr}'s size")


@pytest.mark.parametrize("value", [b"1.2.3.abc\x00", b"1.2 .3", MARKER + b"\x00", b"1.2.3\x001"])
def test_a_uid_with_other_characters_is_malformed(value: bytes) -> None:
    elements = {**base(), 0x00081155: ("UI", value if len(value) % 2 == 0 else value + b"\x00")}
    assert refusal(instance(elements)) == (
        "(0008,1155): a UID with characters other than digits and dots")


def test_an_undefined_length_outside_pixel_data_and_sequences_is_malformed() -> None:
    # Read as encapsulated fragments before, and copied without a look at the text inside.
    header = b"\x08\x00\x30\x10UT\x00\x00\xff\xff\xff\xff"  # StudyDescription, UT, undefined
    fragments = b"\xfe\xff\x00\xe0\x04\x00\x00\x00" + MARKER[:4] + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    data = part10(body({**base(), 0x00081030: ("raw", header + fragments)}))
    assert refusal(data) == "(0008,1030): an undefined length for VR UT"


HARMLESS = {
    "text VRs for each other": {0x00081030: ("SH", text("HEAD")), 0x00080080: ("UT", text("X")),
                                0x00200011: ("LO", text("3")), 0x00180050: ("IS", text("1"))},
    "OB for OW": {0x00281201: ("OB", bytes(8))},  # RedPaletteColorLookupTableData
    "SS for US": {**image(rows=4, columns=4), 0x00280010: ("SS", us(4)), 0x7FE00010: ("OW", bytes(16))},
    "a retired tag under another VR": {0x00080040: ("LO", text("RETIRED"))},  # DataSetType (US)
    "a private element in any VR": {0x00190010: ("LO", text("ACME")), 0x00191001: ("FD", bytes(8)),
                                    0x00191002: ("UI", text("not a uid"))},
    "UN for a known tag": {0x00081030: ("UN", text("HEAD"))},
}


@pytest.mark.parametrize("case", sorted(HARMLESS))
def test_harmless_vr_variants_of_real_data_are_cleaned(case: str) -> None:
    result = deidentify(instance({**base(), **HARMLESS[case]}))
    assert result.dataset.SOPInstanceUID != SOP_INSTANCE_UID  # cleaned: a new UID


def test_a_text_vr_variant_is_cleaned_as_the_dictionary_says() -> None:
    # A description sent as TM (times are copied) is still cleaned as the LO it is.
    item: list[bytes | memoryview] = [element_bytes(0x00321060, "TM", text("DOE PROCEDURE"), EXPLICIT_LITTLE)]
    elements = {**base(), 0x00400275: ("raw", sequence_bytes(0x00400275, [item], EXPLICIT_LITTLE))}
    policy = Policy(build_profile(("clean_descriptors",)))
    output = deidentify_encoded(instance(elements), policy, SECRET).dataset
    cleaned = output.RequestAttributesSequence[0].RequestedProcedureDescription
    assert "PROCEDURE" in cleaned and "DOE" not in cleaned


def test_a_date_sent_as_text_is_still_shifted() -> None:
    elements = {**base(), 0x00080020: ("LO", text("20200102"))}
    policy = Policy(build_profile(("retain_long_modified_dates",)))
    output = deidentify_encoded(instance(elements), policy, SECRET).dataset
    assert output.StudyDate != "20200102" and len(output.StudyDate) == 8
    assert output["StudyDate"].VR == "DA"  # written anew as what it is


def test_uids_may_be_padded_and_multi_valued() -> None:
    elements = {**base(), 0x00080016: ("UI", b"1.2.840.10008.5.1.4.1.1.88.11 "),
                0x00081150: ("UI", uid("1.2.3\\1.2.4"))}
    assert deidentify(instance(elements)).dataset.SOPClassUID == BASIC_TEXT_SR


def test_a_sequence_sent_as_un_keeps_an_explicit_header() -> None:
    # Its items are implicit VR (PS3.5 6.2.2); the header is the explicit data set's.
    item = element_bytes(0x00200013, "IS", text("7"), IMPLICIT_LITTLE)
    sequence = (b"\x08\x00\x15\x11UN\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff" + item
                + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    output = deidentify(part10(body({**base(), 0x00081115: ("raw", sequence)}))).data
    assert b"\x08\x00\x15\x11UN\x00\x00\xff\xff\xff\xff" in output
    assert pydicom.dcmread(BytesIO(output)).ReferencedSeriesSequence[0].InstanceNumber == 7


def test_repeated_or_unordered_elements_are_malformed() -> None:
    data = part10(body(base(), extra=[element_bytes(0x00100010, "PN", MARKER + b" ", EXPLICIT_LITTLE)]))
    assert refusal(data) == "(0010,0010): elements out of order or repeated"


# --- Specific Character Set -----------------------------------------------------------------


@pytest.mark.parametrize("value", [b"ISO_IR 100\x00X", b"ISO_IR\x00100", b"ISO_IR 999", b"utf-16",
                                   b"latin_1", b"ISO-IR 100", b"ISO_IR 100\\", b"ISO_IR 192\\\\GB18030"])
def test_an_undefined_character_set_term_is_malformed(value: bytes) -> None:
    elements = {**base(), 0x00080005: ("CS", value + b" " * (len(value) % 2))}
    assert refusal(instance(elements)) == "SpecificCharacterSet holds a term that is not a defined term"


def test_an_undefined_character_set_in_an_item_is_malformed() -> None:
    item = [element_bytes(0x00080005, "CS", b"ISO_IR 999", EXPLICIT_LITTLE),
            element_bytes(0x0008103E, "LO", text("X"), EXPLICIT_LITTLE)]
    data = part10(body({**base(), 0x00081115: ("raw", in_sequence(item))}))
    assert refusal(data) == "SpecificCharacterSet holds a term that is not a defined term"


@pytest.mark.parametrize("term", sorted(CHARSET_TERMS))
def test_every_defined_term_is_accepted_with_trailing_spaces(term: str) -> None:
    value = (term + " ").encode()
    elements = {**base(), 0x00080005: ("CS", value + b" " * (len(value) % 2))}
    assert deidentify(instance(elements)).dataset.SOPClassUID == BASIC_TEXT_SR


@pytest.mark.parametrize("value", [b"", b"\\ISO 2022 IR 87", b"ISO 2022 IR 6\\ISO 2022 IR 100",
                                   b"\\ISO 2022 IR 149 "])
def test_an_empty_first_value_and_code_extensions_are_accepted(value: bytes) -> None:
    elements = {**base(), 0x00080005: ("CS", value + b" " * (len(value) % 2))}
    assert deidentify(instance(elements)).dataset.SOPClassUID == BASIC_TEXT_SR


# --- file meta inside the data set --------------------------------------------------------------

META_ELEMENTS = [element_bytes(0x00020013, "SH", MARKER + b" ", EXPLICIT_LITTLE),
                 element_bytes(0x00020016, "AE", MARKER + b" ", EXPLICIT_LITTLE)]


def assert_no_meta_in_data_set(output: bytes) -> None:
    ds = pydicom.dcmread(BytesIO(output), force=False)
    assert [t for t in ds.keys() if t.group == 2] == []
    assert MARKER not in output


def test_file_meta_elements_after_the_first_element_are_removed() -> None:
    elements = {**base(), 0x00080005: ("CS", text("ISO_IR 100"))}
    encoded = body(elements)
    first_end = len(element_bytes(0x00080005, "CS", text("ISO_IR 100"), EXPLICIT_LITTLE))
    data = part10(encoded[:first_end] + b"".join(META_ELEMENTS) + encoded[first_end:])
    assert_no_meta_in_data_set(deidentify(data).data)


def test_file_meta_elements_in_an_item_are_removed() -> None:
    item = [*META_ELEMENTS, element_bytes(0x00200013, "IS", text("7"), EXPLICIT_LITTLE)]
    data = part10(body({**base(), 0x00081115: ("raw", in_sequence(item))}))
    output = deidentify(data).data
    assert_no_meta_in_data_set(output)
    assert pydicom.dcmread(BytesIO(output)).ReferencedSeriesSequence[0].InstanceNumber == 7


def test_file_meta_elements_leading_a_received_data_set_are_removed() -> None:
    data_set = b"".join(META_ELEMENTS) + body(base())
    result = deidentify_dataset(data_set, SYNTAX[EXPLICIT_LITTLE], Policy(build_profile()), SECRET)
    assert_no_meta_in_data_set(result.data)


def test_file_meta_elements_are_removed_from_a_trusted_instance_too() -> None:
    elements = {**base(), 0x00120062: ("CS", text("YES")), 0x00100010: ("PN", text("ANONYMOUS")),
                0x00100020: ("LO", text("ANON0001"))}
    encoded = body(elements)
    cut = encoded.index(b"\x10\x00\x10\x00")  # before PatientName
    data = part10(encoded[:cut] + META_ELEMENTS[1] + encoded[cut:])
    result = deidentify(data, trust_deidentified=True)
    assert result.trusted
    assert_no_meta_in_data_set(result.data)


# --- Study and Series Instance UIDs ---------------------------------------------------------------


@pytest.mark.parametrize(("tag", "name"), [
    (0x0020000D, "StudyInstanceUID"), (0x0020000E, "SeriesInstanceUID"), (0x00080018, "SOPInstanceUID")])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_an_instance_without_its_study_series_or_sop_uid_is_malformed(tag: int, name: str, how: str) -> None:
    elements = base()
    if how == "missing":
        del elements[tag]
    else:
        elements[tag] = ("UI", b"")
    assert refusal(instance(elements)) == f"{name} is missing"


# --- pixel data against the image attributes -------------------------------------------------------


def with_pixels(elements: Elements, size: int, tag: int = 0x7FE00010, vr: str = "OB") -> bytes:
    return instance({**elements, tag: (vr, bytes(size))})


@pytest.mark.parametrize(("attributes", "needed"), [
    (image(rows=4, columns=5, bits=8), 20),
    (image(rows=4, columns=5, bits=16), 40),
    (image(rows=3, columns=5, bits=8, samples=3), 45),
    ({**image(rows=4, columns=4, bits=16), 0x00280008: ("IS", text("3"))}, 96),
    ({**image(rows=3, columns=3, bits=1)}, 2),  # 9 bits, packed
    ({**image(rows=2, columns=4, bits=8, samples=3), 0x00280004: ("CS", text("YBR_FULL_422"))}, 16),
])
def test_native_pixel_data_shorter_than_the_image_is_malformed(attributes: Elements, needed: int) -> None:
    even = needed + needed % 2
    assert deidentify(with_pixels(attributes, even)).dataset.PixelData == bytes(even)
    assert refusal(with_pixels(attributes, even - 2)) == "pixel data shorter than the image attributes say"


def test_native_pixel_data_longer_than_the_image_is_kept_as_it_came() -> None:
    # Vendors pad: an odd image size takes a byte, some add more; the bytes are copied as they are.
    attributes = image(rows=3, columns=3, bits=8)
    for size in (10, 64):
        assert len(deidentify(with_pixels(attributes, size)).dataset.PixelData) == size


@pytest.mark.parametrize(("tag", "vr", "bytes_per_sample"), [(0x7FE00008, "OF", 4), (0x7FE00009, "OD", 8)])
def test_float_pixel_data_is_measured_in_its_own_size(tag: int, vr: str, bytes_per_sample: int) -> None:
    attributes = {k: v for k, v in image(rows=2, columns=3).items() if k >> 16 != 0x0028 or k in
                  (0x00280002, 0x00280004, 0x00280010, 0x00280011)}
    output = deidentify(with_pixels(attributes, 6 * bytes_per_sample, tag, vr)).dataset
    assert (output[tag].VR, len(output[tag].value)) == (vr, 6 * bytes_per_sample)
    assert refusal(with_pixels(attributes, 5 * bytes_per_sample, tag, vr)) == (
        "pixel data shorter than the image attributes say")


@pytest.mark.parametrize("missing", [0x00280010, 0x00280011, 0x00280002, 0x00280100])
def test_pixel_data_without_its_image_attributes_is_malformed(missing: int) -> None:
    attributes = image(rows=4, columns=4)
    del attributes[missing]
    assert refusal(with_pixels(attributes, 16)) == (
        "pixel data without Rows, Columns, SamplesPerPixel or BitsAllocated")


def encapsulated(*fragments: bytes) -> bytes:
    items = b"".join(b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in fragments)
    return b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.mark.parametrize(("fragments", "ok"), [
    ((b"",), False),  # an empty offset table alone
    ((b"", b""), False),  # and an empty fragment
    ((b"", b"\xff\xd8\xff\xd9"), True),
    ((b"\x00\x00\x00\x00", b"\xff\xd8", b"\xff\xd9"), True),
])
def test_encapsulated_pixel_data_needs_a_fragment_with_data(fragments: tuple[bytes, ...], ok: bool) -> None:
    data_set = body({**image(), 0x7FE00010: ("raw", encapsulated(*fragments))})
    data = part10(data_set, "1.2.840.10008.1.2.4.50")
    if ok:
        assert deidentify(data).transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    else:
        assert refusal(data) == "encapsulated pixel data without a fragment of data"


# --- the anonymize command: per-file failures, conflicts --------------------------------------------


@pytest.fixture()
def anonymizer(tmp_path: Path) -> Anonymizer:
    class NoStore:
        def record(self, pseudonyms: object) -> None:
            pass

        def close(self) -> None:
            pass

    return Anonymizer(Policy(build_profile()), SECRET, NoStore, Quarantine(tmp_path / "quarantine"))  # type: ignore[arg-type]


def test_clean_file_turns_anything_unexpected_into_a_quarantine(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "one.dcm"
    source.write_bytes(instance(base()))

    def broken(clean: object) -> tuple[str, ...]:
        raise IndexError("PID-12345")

    monkeypatch.setattr(anonymize, "relative_path", broken)
    outcome = clean_file(source, tmp_path / "out", Policy(build_profile()), SECRET)
    assert isinstance(outcome, MalformedInstance)
    assert str(outcome) == "cannot read or de-identify the instance (IndexError)"


def mutants(folder: Path) -> dict[str, bytes]:
    """Inputs that raised out of the command before: RecursionError, ValueError, struct.error."""
    cut = instance(base())
    header = cut[: cut.index(b"\x10\x00\x20\x00") + 6]  # PatientID's header, its length cut off
    files = {
        "deep.dcm": part10(body({**base(), 0x00081115: ("raw", nested(5000))})),
        "charset.dcm": instance({**base(), 0x00080005: ("CS", b"ISO_IR 100\x00X ")}),
        "header.dcm": header,
        "good.dcm": instance(base()),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_a_folder_with_bad_files_is_done_to_the_end(tmp_path: Path, anonymizer: Anonymizer) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    mutants(src)
    summary = anonymize_tree(src, dst, anonymizer)
    assert (summary.written, summary.quarantined, summary.skipped) == (1, 3, 0)
    assert summary.reasons == {"malformed": 3}
    assert len(list(dst.rglob("*.dcm"))) == 1


def test_the_command_exits_1_when_it_quarantined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("DICOM_GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    mutants(src)
    (tmp_path / "secret.key").write_text("ab" * 32)
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
                      f'secret_file = "{tmp_path / "secret.key"}"\n')
    code = main(["anonymize", "--config", str(config), "--json", str(src), str(tmp_path / "out")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (summary["written"], summary["quarantined"]) == (1, 3)


def header_only(data: bytes) -> bytes:
    """The same instance without its image: group 0028 and the pixel data dropped."""
    ds = pydicom.dcmread(BytesIO(data))
    for element in list(ds):
        if element.tag.group in (0x0028, 0x7FE0):
            del ds[element.tag]
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def other_slice(data: bytes) -> bytes:
    """The same patient, study, series and SOP Instance UID, another slice: a different
    instance under a reused UID."""
    ds = pydicom.dcmread(BytesIO(data))
    ds.SliceLocation, ds.InstanceNumber = "-42.5", 99
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_different_instance_with_the_same_uid_never_replaces_the_first(tmp_path: Path,
                                                                          anonymizer: Anonymizer) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    good = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    shutil.copy(good, src / "a_good.dcm")
    shutil.copy(good, src / "b_same_again.dcm")
    (src / "c_other_slice.dcm").write_bytes(other_slice(good.read_bytes()))
    (src / "d_header_only.dcm").write_bytes(header_only(good.read_bytes()))
    summary = anonymize_tree(src, dst, anonymizer)
    assert (summary.written, summary.duplicates, summary.quarantined) == (2, 1, 2)
    assert summary.reasons == {ConflictingInstance.reason: 1, MalformedInstance.reason: 1}
    [output] = list(dst.rglob("*.dcm"))
    assert output.read_bytes() == deidentify(good.read_bytes()).data  # the good copy stayed
    reasons = {Path(r.source).name: r.reason for r in anonymizer.quarantine.list()}
    assert reasons == {"c_other_slice.dcm": "conflicting-instance", "d_header_only.dcm": "malformed"}


def test_a_run_again_replaces_its_earlier_output_but_a_header_only_copy_never_does(
        tmp_path: Path, anonymizer: Anonymizer) -> None:
    good = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    first, second, third, dst = tmp_path / "first", tmp_path / "second", tmp_path / "third", tmp_path / "out"
    for folder in (first, second, third):
        folder.mkdir()
    shutil.copy(good, first / "ct.dcm")
    assert anonymize_tree(first, dst, anonymizer).written == 1
    again = anonymize_tree(first, dst, anonymizer)
    assert (again.written, again.quarantined) == (1, 0)
    (second / "ct.dcm").write_bytes(header_only(good.read_bytes()))
    later = anonymize_tree(second, dst, anonymizer)
    assert (later.written, later.quarantined, later.reasons) == (0, 1, {"malformed": 1})
    [output] = list(dst.rglob("*.dcm"))
    assert output.read_bytes() == deidentify(good.read_bytes()).data
    (third / "ct.dcm").write_bytes(other_slice(good.read_bytes()))
    assert anonymize_tree(third, dst, anonymizer).written == 1  # a new run's output wins
    assert output.read_bytes() == deidentify(other_slice(good.read_bytes())).data
    assert [p.name for p in dst.rglob(".*")] == []  # no temporary left behind


def test_a_deflate_bomb_is_refused_before_it_fills_the_memory() -> None:
    from gateway.deid import elements

    bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = bomb.compress(b"\x00" * (4 << 20)) + bomb.flush()
    assert len(data) < 8192
    with pytest.raises(MalformedInstance, match="inflates to more than 1 MiB"):
        elements._inflate(data, limit=1 << 20)
    assert len(elements._inflate(data, limit=8 << 20)) == 4 << 20
