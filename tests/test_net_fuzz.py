"""Whatever bytes a peer sends, the upper layer answers with a value or a ProtocolError, and the
acceptor with an A-ASSOCIATE-RJ, an A-ABORT or a close, within its timers, and then serves the
next sender as before.

The parsers (A-ASSOCIATE-RQ and -AC, DIMSE command sets) get random bytes and mutations of valid
PDUs (truncated, bytes flipped, lengths changed, items repeated or inserted); what encodes must
parse back the same. The live acceptor gets mutated association requests and PDUs after a valid
association. Deterministic: hypothesis is derandomized and keeps no database, the live mutations
come from a seeded generator.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netpeers import GATEWAY_AE, LOOPBACK

from gateway.net.dimse import (
    AFFECTED_SOP_CLASS_UID,
    C_STORE_RQ,
    COMMAND_FIELD,
    MESSAGE_ID,
    c_echo_rq,
    c_store_rq,
    decode_command,
    encode_command,
)
from gateway.net.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    APPLICATION_CONTEXT,
    ContextResult,
    ProposedContext,
    ProtocolError,
    encode_associate_ac,
    encode_associate_rq,
    p_data_tf,
    parse_associate_ac,
    parse_associate_rq,
)

pytest_plugins = ["acceptors"]
if TYPE_CHECKING:
    from acceptors import Running

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow], max_examples=400)
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
LIVE_CASES = 150
ANSWER_SECONDS = 8.0  # within the fixture's 5 s ARTIM/DIMSE timers, with a margin

ae_titles = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
                    min_size=1, max_size=16)
uids = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,8}", fullmatch=True).filter(lambda u: len(u) <= 64)
contexts = st.lists(
    st.builds(ProposedContext, st.integers(0, 127).map(lambda n: 2 * n + 1), uids,
              st.lists(uids, min_size=1, max_size=4).map(tuple)),
    min_size=1, max_size=8, unique_by=lambda c: c.id)


def valid_rq(called: str = GATEWAY_AE, proposed: tuple[ProposedContext, ...] = (
        ProposedContext(1, VERIFICATION, (IMPLICIT_LE,)),
        ProposedContext(3, CT_IMAGE, (EXPLICIT_LE, IMPLICIT_LE)))) -> bytes:
    return encode_associate_rq(called, "FUZZER", proposed, 16384, "1.2.3.4", "FUZZ_1")


# --- parsers --------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_parse_as_an_association_request_or_a_protocol_error(body: bytes) -> None:
    for parse in (parse_associate_rq, parse_associate_ac):
        with suppress(ProtocolError):
            parse(body)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of the ways a broken or hostile peer changes a PDU."""
    out = bytearray(data)
    choice = rng.randrange(6)
    if choice == 0:  # truncated
        return bytes(out[: rng.randrange(len(out))])
    if choice == 1:  # bytes flipped
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif choice == 2:  # a 2-byte item length (or the PDU length) changed
        at = rng.randrange(len(out) - 1)
        struct.pack_into(">H", out, at, rng.choice((0, 1, 0xFFFF, rng.randrange(0x10000))))
    elif choice == 3:  # a run repeated
        start = rng.randrange(len(out))
        end = min(len(out), start + rng.randint(1, 64))
        out[start:start] = out[start:end] * rng.randint(1, 4)
    elif choice == 4:  # random bytes inserted
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 32))
    else:  # a run deleted
        start = rng.randrange(len(out))
        del out[start : start + rng.randint(1, 32)]
    return bytes(out)


@FUZZ
@given(st.integers(0, 2**32 - 1))
def test_mutated_association_requests_parse_or_raise_a_protocol_error(seed: int) -> None:
    rng = random.Random(seed)
    body = valid_rq()[6:]
    for _ in range(rng.randint(1, 3)):
        body = mutate(body, rng) or b"\x00"
    try:
        request = parse_associate_rq(body)
    except ProtocolError:
        return
    assert all(0 <= cx.id <= 255 for cx in request.contexts)
    assert 0 <= request.max_pdu <= 0xFFFFFFFF


@FUZZ
@given(ae_titles, ae_titles, contexts, st.integers(0, 2**32 - 1))
def test_what_the_requestor_encodes_the_acceptor_parses_back(
        called: str, calling: str, proposed: list[ProposedContext], max_pdu: int) -> None:
    pdu = encode_associate_rq(called, calling, proposed, max_pdu, "1.2.3.4.5", "VERSION_1")
    assert pdu[0] == 0x01 and struct.unpack(">I", pdu[2:6])[0] == len(pdu) - 6
    request = parse_associate_rq(pdu[6:])
    assert (request.called_ae, request.calling_ae) == (called.strip(), calling.strip())
    assert request.application_context == APPLICATION_CONTEXT
    assert request.contexts == tuple(proposed)
    assert request.max_pdu == max_pdu
    assert (request.implementation_class_uid, request.implementation_version_name) == (
        "1.2.3.4.5", "VERSION_1")
    assert request.supports_version_1


@FUZZ
@given(contexts, st.integers(0, 2**32 - 1), st.lists(st.integers(0, 4), min_size=8, max_size=8))
def test_what_the_acceptor_encodes_the_requestor_parses_back(
        proposed: list[ProposedContext], max_pdu: int, results: list[int]) -> None:
    request = parse_associate_rq(encode_associate_rq(GATEWAY_AE, "PEER", proposed, 0, "1.2", "V")[6:])
    answers = [ContextResult(cx.id, results[i], cx.transfer_syntaxes[0])
               for i, cx in enumerate(proposed)]
    pdu = encode_associate_ac(request, GATEWAY_AE, answers, max_pdu, "1.2.3", "GW")
    accepted = parse_associate_ac(pdu[6:])
    assert accepted.contexts == tuple(answers)
    assert accepted.max_pdu == max_pdu


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_as_a_command_set_or_a_protocol_error(data: bytes) -> None:
    try:
        command = decode_command(data)
    except ProtocolError:
        return
    # what was understood is what is answered from: encoding it again gives the same elements
    again = decode_command(encode_command({k: v for k, v in command.items() if k != 0x0000}))
    assert {k: v for k, v in again.items() if k != 0x0000} == {
        k: v for k, v in command.items() if k != 0x0000}


@FUZZ
@given(st.integers(1, 0xFFFF), uids, uids)
def test_a_store_request_decodes_to_what_was_encoded(message_id: int, sop_class: str,
                                                     instance: str) -> None:
    command = decode_command(c_store_rq(message_id, sop_class, instance))
    assert int.from_bytes(command[COMMAND_FIELD], "little") == C_STORE_RQ
    assert int.from_bytes(command[MESSAGE_ID], "little") == message_id
    assert command[AFFECTED_SOP_CLASS_UID].rstrip(b"\x00").decode() == sop_class


# --- the live acceptor ----------------------------------------------------------------------------


def answer(sock: socket.socket) -> bytes:
    """What the acceptor sends until it closes (b"" for a plain close), within ANSWER_SECONDS."""
    sock.settimeout(ANSWER_SECONDS)
    deadline = time.monotonic() + ANSWER_SECONDS
    received = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return received
        if not chunk:
            return received
        received += chunk
        if received[:1] in (bytes((A_ASSOCIATE_RJ,)), bytes((A_ABORT,))) and len(received) >= 10:
            return received
    raise AssertionError(f"no answer and no close within {ANSWER_SECONDS} s: {received[:32]!r}")


def send_and_read(port: int, data: bytes, then_close_our_side: bool = True) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=ANSWER_SECONDS) as sock:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return b""
        if then_close_our_side:
            sock.shutdown(socket.SHUT_WR)  # nothing more comes: a short PDU is not waited for
        return answer(sock)


def echo_works(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=ANSWER_SECONDS) as sock:
        sock.settimeout(ANSWER_SECONDS)
        sock.sendall(valid_rq())
        if sock.recv(1)[:1] != bytes((A_ASSOCIATE_AC,)):
            return False
        answer_rest(sock)
        sock.sendall(p_data_tf(1, c_echo_rq(7), 16384))
        header = recv_exactly(sock, 6)
        body = recv_exactly(sock, struct.unpack(">I", header[2:])[0])
        command = decode_command(body[6:])  # one PDV: item length, context, control header
        return int.from_bytes(command[0x0900], "little") == 0x0000


def answer_rest(sock: socket.socket) -> None:
    header = recv_exactly(sock, 5)
    recv_exactly(sock, struct.unpack(">I", header[1:])[0])


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def test_mutated_association_requests_get_a_reject_an_abort_or_a_close(
        start: Callable[..., Running]) -> None:
    running = start()
    rng = random.Random(20261205)
    seen: dict[int, int] = {}
    for case in range(LIVE_CASES):
        data = valid_rq()
        for _ in range(rng.randint(1, 3)):
            data = mutate(data, rng) or b"\x01"
        reply = send_and_read(running.port, data)
        kind = reply[0] if reply else 0
        assert kind in (0, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT), (case, reply[:16])
        seen[kind] = seen.get(kind, 0) + 1
    assert echo_works(running.port)
    assert running.stored == []
    assert seen.get(A_ASSOCIATE_RJ, 0) + seen.get(A_ABORT, 0) > LIVE_CASES // 4, seen


def test_garbage_after_a_valid_association_is_aborted_and_nothing_is_stored(
        start: Callable[..., Running]) -> None:
    running = start()
    rng = random.Random(4711)
    store = p_data_tf(3, c_store_rq(1, CT_IMAGE, "1.2.3.4.5"), 16384)
    for case in range(LIVE_CASES // 3):
        with socket.create_connection((LOOPBACK, running.port), timeout=ANSWER_SECONDS) as sock:
            sock.settimeout(ANSWER_SECONDS)
            sock.sendall(valid_rq())
            assert sock.recv(1) == bytes((A_ASSOCIATE_AC,))
            answer_rest(sock)
            try:
                sock.sendall(mutate(store, rng) or b"\x04")
                sock.shutdown(socket.SHUT_WR)
            except (ConnectionResetError, BrokenPipeError):
                continue
            reply = answer(sock)
            # an abort or a close; a mangled command may still get its answer (P-DATA) or,
            # turned into a release request, the release reply
            assert reply[:1] in (b"", bytes((A_ABORT,)), b"\x04", b"\x06"), (case, reply[:16])
    assert running.stored == []  # a store without its data set never reaches the handler
    assert echo_works(running.port)


def test_random_bytes_instead_of_a_pdu_are_answered_or_closed(
        start: Callable[..., Running]) -> None:
    running = start()
    rng = random.Random(99)
    for _ in range(LIVE_CASES // 3):
        reply = send_and_read(running.port, rng.randbytes(rng.randint(1, 200)))
        assert reply[:1] in (b"", bytes((A_ASSOCIATE_RJ,)), bytes((A_ABORT,)))
    assert echo_works(running.port)


def test_a_request_for_another_called_ae_is_rejected_even_when_mangled_elsewhere(
        start: Callable[..., Running]) -> None:
    running = start()
    mangled = bytearray(valid_rq(called="SOMEONE_ELSE"))
    mangled[-1] ^= 0xFF  # the implementation version name: not something to refuse for
    reply = send_and_read(running.port, bytes(mangled))
    assert reply == bytes((A_ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, 1, 1, 7))  # called AE not known


@pytest.mark.parametrize(("uid", "storage"), [
    ("1.2.840.10008.5.1.4.1.1.2", True),  # CT Image Storage
    ("1.2.840.10008.5.1.4.1.1.88.33", True),  # Comprehensive SR Storage
    ("1.2.840.10008.5.1.4.1.1.88.70", True),  # Implantation Plan SR Storage
    ("1.2.840.10008.5.1.4.1.1.200.2", True),  # CT Performed Procedure Protocol Storage
    ("1.2.840.10008.5.1.4.38.1", False),  # Hanging Protocol Storage: no patient, no study
    ("1.2.840.10008.5.1.4.1.1.201.1", False),  # Inventory Storage: likewise
    ("1.2.840.10008.5.1.4.31", False),  # Modality Worklist Information Model - FIND
    ("1.2.840.10008.5.1.4.1.2.2.2", False),  # Study Root Query/Retrieve - MOVE
    ("1.2.840.10008.1.20.1", False),  # Storage Commitment Push Model SOP Class
    ("1.2.840.10008.1.20.1.1", False),  # its well-known SOP instance
    ("1.2.840.10008.5.1.1.1", False),  # Basic Film Session (print)
    ("1.2.840.10008.1.2.1", False),  # a transfer syntax
])
def test_storage_sop_classes_are_told_from_other_services(uid: str, storage: bool) -> None:
    from gateway.receive import storage_sop_class

    assert storage_sop_class(uid) is storage


def test_made_up_uids_are_refused_without_a_warning_and_odd_real_ones_accepted() -> None:
    import warnings

    from gateway.receive import storage_sop_class, transfer_syntax_supported

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns about each malformed UI value
        for made_up in ("1.2.840.10008.5.1.4.1.1.\ufffd", "1.2.840\x00\x005.1", "1..2", "",
                        "1." + "2" * 70, "1.2.840.10008.1.2.1 "):
            assert not storage_sop_class(made_up), made_up
            assert not transfer_syntax_supported(made_up), made_up
    assert storage_sop_class(CT_IMAGE)
    assert storage_sop_class("1.2.840.10008.5.1.4.1.1.02")  # a leading zero, as devices send
    assert storage_sop_class("1.2.826.0.1.3680043.10.999.77")  # private: accepted
    assert not storage_sop_class(VERIFICATION)
    assert transfer_syntax_supported(EXPLICIT_LE)
