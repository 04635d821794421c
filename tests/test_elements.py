"""The byte-level reader and writer under the engine: every real test file is read into the same
structure pydicom sees, written back it reads the same, and a cut-short file is never taken as
whole."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from gateway.deid.elements import (
    EXPLICIT_LITTLE,
    Element,
    EncodedInstance,
    Encoding,
    Reader,
    deflate,
    file_meta,
    read_encoded,
    sequence_bytes,
)
from gateway.deid.engine import Policy, deidentify_encoded
from gateway.deid.profile import build_profile
from gateway.errors import GatewayError, InstanceError, MalformedInstance

SECRET = b"k" * 32


def readable_files() -> list[Path]:
    found = []
    for name in get_testdata_files():
        path = Path(name)
        try:
            read_encoded(path.read_bytes())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(path)
        except (GatewayError, OSError, pydicom.errors.InvalidDicomError):
            continue
        found.append(path)
    return found


FILES = readable_files()


def rewritten(instance: EncodedInstance) -> bytes:
    """The data set written back from its tree: values as read, sequences re-encoded."""

    def elements(items: list[Element], encoding: Encoding) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        for element in items:
            if element.items is None:
                out.append(instance.buffer[element.start : element.end])
            else:
                inner = element.inner or encoding
                nested = [elements(item.elements, inner) for item in element.items]
                vr = "UN" if inner.implicit and not encoding.implicit else "SQ"
                out.append(sequence_bytes(element.tag, nested, inner, vr))
        return out

    body = b"".join(elements(instance.elements, instance.encoding))
    if instance.transfer_syntax == "1.2.840.10008.1.2.1.99":
        body = deflate(body)
    meta = file_meta("1.2.3", "1.2.3.4", instance.transfer_syntax, "1.2.3.5", "TEST")
    return b"\x00" * 128 + b"DICM" + meta + body


def test_many_real_files_are_read() -> None:
    assert len(FILES) > 150


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_file_written_back_from_its_elements_reads_as_the_original(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = pydicom.dcmread(path)
        back = pydicom.dcmread(BytesIO(rewritten(read_encoded(path.read_bytes()))))
        # Compare decoded values: sequences were re-encoded with undefined lengths.
        assert back == original


def test_every_cut_of_an_image_after_its_rows_is_refused() -> None:
    """From Rows on, any cut shows: a partial element, or image attributes without pixels.
    (A cut exactly between two elements before Rows leaves a valid, smaller data set.)"""
    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    rows = next(e for e in read_encoded(data).elements if e.tag == 0x00280010)
    policy = Policy(build_profile())
    for end in range(rows.start + 1, len(data) - 1, 37):
        with pytest.raises(InstanceError):
            deidentify_encoded(data[:end], policy, SECRET)


def test_an_undelimited_sequence_is_refused() -> None:
    data = Path(str(get_testdata_file("rtplan.dcm"))).read_bytes()
    instance = read_encoded(data)
    sequence = next(e for e in instance.elements if e.items)
    # Rewrite that sequence with undefined length, and drop its delimiter by cutting the file.
    items = [[instance.buffer[x.start : x.end] for x in item.elements] for item in sequence.items or []]
    undelimited = sequence_bytes(sequence.tag, items, instance.encoding)[:-8]
    head = bytes(instance.buffer[: sequence.start])
    with pytest.raises(MalformedInstance, match="no end delimiter"):
        read_encoded(head + undelimited)


def test_a_preamble_with_content_is_not_copied() -> None:
    dual = next(p for p in FILES if p.read_bytes()[:4] == b"II*\x00")  # DICOM and TIFF at once
    result = deidentify_encoded(dual.read_bytes(), Policy(build_profile()), SECRET)
    assert result.data[:132] == b"\x00" * 128 + b"DICM"


@pytest.mark.parametrize("vr", [b"SV", b"UV"])
def test_64_bit_integers_have_a_32_bit_length_in_explicit_vr(vr: bytes) -> None:
    # PS3.5 7.1.2: SV and UV are written like OB: 2 reserved bytes, then a 4-byte length.
    # A private tag: a standard one of another VR would contradict the data dictionary.
    element = b"\x19\x00\x10\x10" + vr + b"\x00\x00" + (8).to_bytes(4, "little") + bytes(8)
    following = b"\x20\x00\x13\x00IS\x02\x001 "  # InstanceNumber
    read = Reader(memoryview(element + following), EXPLICIT_LITTLE).read(0, len(element) + 10)
    assert [(e.tag, e.value_start, e.end) for e in read] == [
        (0x00191010, 12, 20), (0x00200013, 28, 30)]


def test_a_deflated_data_set_is_written_with_an_even_length_and_inflates_to_the_same() -> None:
    """PS3.5 A.5: an odd-length deflate stream gets one trailing NUL; archives abort otherwise."""
    import zlib

    bodies = [bytes(range(n % 256)) * (n // 7 + 1) for n in range(1, 40)]
    raw_lengths = []
    for body in bodies:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw_lengths.append(len(compressor.compress(body) + compressor.flush()))
        stream = deflate(body)
        assert len(stream) % 2 == 0
        assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream) == body
    assert any(length % 2 for length in raw_lengths)  # the padding was needed for some of them


def test_a_deflated_instance_de_identified_has_an_even_length_data_set() -> None:
    path = Path(get_testdata_file("image_dfl.dcm"))
    policy = Policy(build_profile(()))
    result = deidentify_encoded(path.read_bytes(), policy, SECRET)
    output = pydicom.dcmread(BytesIO(result.data))
    assert output.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert len(b"".join(result.chunks[1:])) % 2 == 0
    assert output.PixelData == pydicom.dcmread(path).PixelData


# --- what an explicit VR header means is worked out once per attribute and VR ------------------


def _explicit(group: int, number: int, vr: bytes, value: bytes) -> bytes:
    return (group.to_bytes(2, "little") + number.to_bytes(2, "little") + vr
            + len(value).to_bytes(2, "little") + value)


def _read(data: bytes) -> list[Element]:
    return Reader(memoryview(data), EXPLICIT_LITTLE).read(0, len(data))


def test_a_header_read_before_does_not_excuse_a_bad_value_of_the_same_attribute() -> None:
    rows = _explicit(0x0028, 0x0010, b"US", b"\x00\x02")
    assert [e.tag for e in _read(rows)] == [0x00280010]
    with pytest.raises(MalformedInstance, match="not a multiple of its VR US"):
        _read(_explicit(0x0028, 0x0010, b"US", b"\x00\x02\x00"))
    uid = _explicit(0x0008, 0x0018, b"UI", b"1.2.3\x00")
    assert [e.vr for e in _read(uid)] == ["UI"]
    with pytest.raises(MalformedInstance, match="characters other than digits"):
        _read(_explicit(0x0008, 0x0018, b"UI", b"1.2.X\x00"))


def test_a_vr_that_contradicts_the_dictionary_is_refused_each_time() -> None:
    assert [e.vr for e in _read(_explicit(0x0008, 0x0018, b"UI", b"1.2\x00"))] == ["UI"]
    for _ in range(2):
        with pytest.raises(MalformedInstance, match="contradicts the data dictionary"):
            _read(_explicit(0x0008, 0x0018, b"FD", bytes(8)))
    for _ in range(2):
        with pytest.raises(MalformedInstance, match="invalid VR"):
            _read(_explicit(0x0008, 0x0018, b"Q1", b"1.2\x00"))


def test_a_known_attribute_sent_as_un_is_read_and_checked_as_its_dictionary_vr() -> None:
    def as_un(value: bytes) -> bytes:  # Rows, VR UN: 2 reserved bytes and a 32-bit length
        return b"\x28\x00\x10\x00UN\x00\x00" + len(value).to_bytes(4, "little") + value

    (rows,) = _read(as_un(b"\x00\x02"))
    assert (rows.vr, rows.value_start, rows.end) == ("US", 12, 14)
    with pytest.raises(MalformedInstance, match="not a multiple of its VR US"):
        _read(as_un(b"\x00\x02\x00"))


def test_endless_made_up_private_headers_are_read_with_a_bounded_memory() -> None:
    from gateway.deid.elements import MAX_PLANS, Encoding

    encoding = Encoding(implicit=False, little=True)
    count = MAX_PLANS + 1000
    data = b"".join(_explicit(0x0009 + 2 * (n >> 16), n & 0xFFFF, b"LO", b"AB")
                    for n in range(0x1000, 0x1000 + count))
    read = Reader(memoryview(data), encoding).read(0, len(data))
    assert len(read) == count
    assert len(encoding.plans) <= MAX_PLANS
