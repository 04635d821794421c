"""The acceptor against unusual and hostile peers (issue 14, inbound): what PS3.8/PS3.7 require
it to check, and the bounds on what a peer can make it wait for or hold. The server runs
in-process on a free loopback port; raw sockets play the peers no real tool can be, pynetdicom
and dcmtk the ones that can.

A timer cannot fire early, but the test's clock starts a little after the gateway's: the lower
bounds allow 0.1 s for that; the upper ones a wide margin for a loaded machine."""

from __future__ import annotations

import copy
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
from netpeers import (
    DCMTK_ENV,
    LOOPBACK,
    ct_template,
    eventually,
    pydicom_file,
    raw_associate_rq,
    read_until_closed,
    recv_pdu,
    requires_dcmtk,
    write_instance,
)
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    Verification,
)
from structlog.testing import capture_logs

from gateway.net.acceptor import StoreRequest, negotiate
from gateway.net.dimse import c_echo_rq, c_store_rq, decode_command
from gateway.net.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    ProposedContext,
    p_data_header,
    p_data_tf,
)
from gateway.net.reader import READ_BUFFER, SMALL_BUFFER, PduReader
from gateway.receive import storage_sop_class, transfer_syntax_supported

pytest_plugins = ["acceptors"]
if TYPE_CHECKING:
    from acceptors import Running
GW = "DICOM_GW"
WAIT = 10.0
MARGIN = 2.5  # seconds a timer may fire late on a loaded machine
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
PRIVATE_TS = "1.2.826.0.1.3680043.10.999.77"  # a transfer syntax nobody here knows
ABORT_INVALID_PARAMETER = bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 6))
ABORT_NOT_SPECIFIED = bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 0))


def scu() -> AE:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    return ae


def echoscu(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-to", "5", "-ta", "5", "-td", "5", "-aec", GW, LOOPBACK,
                           str(port)], capture_output=True, text=True, timeout=30, env=DCMTK_ENV)


def connect(port: int) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=WAIT)


def associated(port: int, contexts: tuple[tuple[int, str, tuple[str, ...]], ...]) -> socket.socket:
    """A raw connection with an established association."""
    sock = connect(port)
    sock.sendall(raw_associate_rq(GW, contexts=contexts))
    kind, _ = recv_pdu(sock)
    assert kind == A_ASSOCIATE_AC
    return sock


CT_CONTEXT = ((1, CTImageStorage, (EXPLICIT_LE,)),)


def store_command(sop_class: str = CTImageStorage, message_id: int = 1,
                  sop_instance: str = "1.2.826.0.1.3680043.10.999.5.1") -> bytes:
    return p_data_tf(1, c_store_rq(message_id, sop_class, sop_instance), 0)


def data_pdu(data: bytes, last: bool, context_id: int = 1) -> bytes:
    return p_data_header(context_id, len(data), command=False, last=last) + data


def response_status(sock: socket.socket) -> tuple[int, dict[int, bytes]]:
    kind, body = recv_pdu(sock)
    assert kind == P_DATA_TF and body[5] == 0x03, "one PDV: the whole response command"
    command = decode_command(body[6:])
    return int.from_bytes(command[0x0900], "little"), command


def events(logs: list[MutableMapping[str, Any]], text: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if text in e["event"]]


@pytest.fixture()
def big_ct(tmp_path: Path) -> Callable[[int], Path]:
    """A CT file with ``side`` x ``side`` 16-bit pixels."""
    def make(side: int) -> Path:
        template = ct_template()
        template.Rows = template.Columns = side
        template.PixelData = bytes(side * side * 2)
        return write_instance(tmp_path / "src", template, "MRN-HARD", "Hostile^Peer", "1.2.3.4",
                              "1.2.3.4.5").path
    return make


# --- 1. negotiation -------------------------------------------------------------------------------


def test_a_storage_context_gets_the_first_transfer_syntax_we_support_or_result_4(
    start: Callable[..., Running],
) -> None:
    running = start()
    contexts = [
        build_context(Verification, [EXPLICIT_LE, IMPLICIT_LE]),
        build_context(CTImageStorage, [PRIVATE_TS, JPEG_2000, EXPLICIT_LE]),
        build_context(MRImageStorage, [PRIVATE_TS]),
    ]
    assoc = scu().associate(LOOPBACK, running.port, contexts=contexts, ae_title=GW)
    try:
        assert assoc.is_established
        accepted = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        assert accepted == {Verification: IMPLICIT_LE, CTImageStorage: JPEG_2000}
        assert {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts} == {
            MRImageStorage: 0x04}  # transfer syntaxes not supported
        mr = pydicom.dcmread(pydicom_file("MR_small.dcm"))
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(mr)  # pynetdicom has no context to send it on
    finally:
        assoc.release()
    assert running.stored == []


def test_the_gateway_supports_the_transfer_syntaxes_pydicom_knows_and_no_others() -> None:
    known = [IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
             "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
             JPEG_2000, "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"]
    assert all(transfer_syntax_supported(ts) for ts in known)
    assert not any(transfer_syntax_supported(ts) for ts in (PRIVATE_TS, CTImageStorage, "1.2.3"))
    results = negotiate(
        [ProposedContext(1, CTImageStorage, (PRIVATE_TS, "1.2.840.10008.1.2.1.99", EXPLICIT_LE)),
         ProposedContext(3, CTImageStorage, (PRIVATE_TS,)),
         ProposedContext(5, Verification, (PRIVATE_TS, EXPLICIT_LE))],
        storage_sop_class, transfer_syntax_supported)
    assert [(r.id, r.result, r.transfer_syntax) for r in results if r.result == 0] == [
        (1, 0, "1.2.840.10008.1.2.1.99"), (5, 0, EXPLICIT_LE)]
    assert [(r.id, r.result) for r in results if r.result != 0] == [(3, 0x04)]


@requires_dcmtk
def test_dcmtk_storescu_still_stores(start: Callable[..., Running]) -> None:
    running = start()
    files = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]
    sent = subprocess.run(["storescu", "-aec", GW, LOOPBACK, str(running.port), *map(str, files)],
                          capture_output=True, text=True, timeout=60, env=DCMTK_ENV)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sorted(r.sop_class_uid for r in running.stored) == sorted([CTImageStorage,
                                                                      MRImageStorage])


# --- 2. A-ASSOCIATE-RQ checks (PS3.8 9.3.2, 9.3.4) -----------------------------------------------


@pytest.mark.parametrize(("rq", "rejection", "reason"), [
    (raw_associate_rq(GW, contexts=CT_CONTEXT, protocol_version=0x0002), (1, 2, 2),
     "protocol version not supported"),
    (raw_associate_rq(GW, contexts=CT_CONTEXT, application_context="1.2.840.10008.3.1.1.2"),
     (1, 1, 2), "application context name not supported"),
])
def test_an_association_request_we_cannot_speak_is_rejected_with_its_reason(
    start: Callable[..., Running], rq: bytes, rejection: tuple[int, int, int], reason: str,
) -> None:
    running = start()
    with capture_logs() as logs, connect(running.port) as sock:
        sock.sendall(rq)
        kind, body = recv_pdu(sock)
        assert kind == A_ASSOCIATE_RJ
        assert (body[1], body[2], body[3]) == rejection  # result, source, reason
    assert [(e["reason"], e["calling_ae"]) for e in events(logs, "association rejected")] == [
        (reason, "RAW")]
    assert running.server.active_associations() == 0


def test_a_protocol_version_with_bit_0_among_others_is_accepted(start: Callable[..., Running]) -> None:
    running = start()
    with connect(running.port) as sock:
        sock.sendall(raw_associate_rq(GW, contexts=CT_CONTEXT, protocol_version=0x0003))
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC


# --- 3. PDUs the acceptor must not take -------------------------------------------------------------


def test_a_p_data_longer_than_our_maximum_is_aborted_before_its_body(
    start: Callable[..., Running],
) -> None:
    running = start(max_pdu=16384)
    with associated(running.port, CT_CONTEXT) as sock:
        sock.sendall(bytes((P_DATA_TF, 0)) + (16384 + 1).to_bytes(4, "big"))  # and no body
        assert read_until_closed(sock, WAIT) == ABORT_INVALID_PARAMETER
    assert eventually(lambda: running.server.active_associations() == 0, WAIT)


def test_a_p_data_of_exactly_our_maximum_is_taken(start: Callable[..., Running]) -> None:
    running = start(max_pdu=4096)
    data = bytes(10000)
    with associated(running.port, CT_CONTEXT) as sock:
        sock.sendall(store_command())
        for offset in range(0, len(data), 4090):  # 4090 + 6 = 4096 bytes a PDU
            chunk = data[offset : offset + 4090]
            sock.sendall(data_pdu(chunk, last=offset + 4090 >= len(data)))
        assert response_status(sock)[0] == 0x0000
    assert [len(r.dataset) for r in running.stored] == [len(data)]


@pytest.mark.parametrize(("kind", "body"), [
    (A_RELEASE_RQ, bytes(6)),
    (A_RELEASE_RQ, bytes(2)),
    (A_ABORT, bytes(2)),
])
def test_a_release_or_abort_of_the_wrong_length_is_aborted(
    start: Callable[..., Running], kind: int, body: bytes,
) -> None:
    running = start()
    with associated(running.port, CT_CONTEXT) as sock:
        sock.sendall(bytes((kind, 0)) + len(body).to_bytes(4, "big") + body)
        assert read_until_closed(sock, WAIT) == ABORT_INVALID_PARAMETER  # no A-RELEASE-RP


def test_a_pdv_on_a_context_that_was_refused_is_aborted(start: Callable[..., Running]) -> None:
    running = start()
    contexts = ((1, CTImageStorage, (PRIVATE_TS,)), (3, Verification, (IMPLICIT_LE,)))
    with associated(running.port, contexts) as sock:
        sock.sendall(p_data_tf(3, c_echo_rq(1), 0))
        assert response_status(sock)[0] == 0x0000  # context 3 was accepted
        sock.sendall(p_data_tf(1, c_echo_rq(2), 0))  # context 1 was proposed, and refused
        assert read_until_closed(sock, WAIT) == ABORT_INVALID_PARAMETER
    assert running.stored == []


# --- 4. the C-STORE's SOP class and its presentation context ------------------------------------------


def test_a_store_whose_sop_class_is_not_its_contexts_gets_0122_and_is_not_kept(
    start: Callable[..., Running],
) -> None:
    running = start()
    data = bytes(5000)
    with capture_logs() as logs, associated(running.port, CT_CONTEXT) as sock:
        sock.sendall(store_command(MRImageStorage, message_id=1))  # on the CT context
        sock.sendall(data_pdu(data[:2500], last=False) + data_pdu(data[2500:], last=True))
        status, command = response_status(sock)
        assert status == 0x0122  # SOP class not supported
        assert int.from_bytes(command[0x0120], "little") == 1
        assert running.stored == []  # the handler was not called

        sock.sendall(store_command(CTImageStorage, message_id=2))  # the association goes on
        sock.sendall(data_pdu(data, last=True))
        assert response_status(sock)[0] == 0x0000
    assert [r.sop_class_uid for r in running.stored] == [CTImageStorage]
    refused = events(logs, "C-STORE refused")
    assert [(e["status"], e["calling_ae"]) for e in refused] == [("0x0122", "RAW")]


# --- 5a. pending connections: capped, the oldest closed ---------------------------------------------


def test_a_pending_connection_over_the_cap_closes_the_oldest(start: Callable[..., Running]) -> None:
    running = start(max_pending_connections=3, artim_timeout=30.0)
    with capture_logs() as logs:
        idle = [connect(running.port) for _ in range(3)]
        assert eventually(lambda: running.server.pending_connections() == 3, WAIT, 0.02)
        newest = connect(running.port)
        assert read_until_closed(idle[0], WAIT) == b""  # the oldest: closed at once
        assert eventually(lambda: running.server.pending_connections() == 3, WAIT, 0.02)
        for sock in [*idle[1:], newest]:
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # the others wait for their ARTIM timer (5 s)
        # a real sender associates at once: it pushes out the oldest idle one and is served
        assert echoscu(running.port).returncode == 0
        assert read_until_closed(idle[1], WAIT) == b""
    for sock in [*idle, newest]:
        sock.close()
    closed = events(logs, "max_pending_connections")
    assert closed[0]["log_level"] == "warning" and closed[0]["count"] == 1
    assert sum(e["count"] for e in closed) <= 2  # the second within a second: not logged yet


def test_an_idle_flood_cannot_lock_senders_out_nor_grow_the_threads(
    start: Callable[..., Running],
) -> None:
    running = start(max_pending_connections=4, max_associations=2)
    server = running.server
    baseline = threading.active_count()
    most_threads = 0
    flood: list[socket.socket] = []
    with capture_logs() as logs:
        started = time.monotonic()
        try:
            for _ in range(300):
                flood.append(connect(running.port))
                most_threads = max(most_threads, threading.active_count() - baseline)
            assert echoscu(running.port).returncode == 0
            assert eventually(lambda: server.pending_connections() <= 4, WAIT, 0.02)
            most_threads = max(most_threads, threading.active_count() - baseline)
        finally:
            for sock in flood:
                sock.close()
        elapsed = time.monotonic() - started
    assert most_threads <= server.max_threads  # 2 + 4 + a few spare, not 300
    lines = events(logs, "max_pending_connections")
    assert 1 <= len(lines) <= elapsed + 1  # at most one line a second
    assert sum(e["count"] for e in lines) <= 300


# --- 5b. the ARTIM timer -------------------------------------------------------------------------------


def trickle_until_closed(sock: socket.socket, data: bytes, interval: float) -> tuple[int, bytes]:
    """Send ``data`` one byte every ``interval`` until the peer closes: how many bytes went,
    and what the peer sent back."""
    sock.settimeout(interval)
    for sent, byte in enumerate(data):
        try:
            sock.sendall(bytes((byte,)))
            answer = sock.recv(1024)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return sent, b""
        return sent + 1, answer + read_until_closed(sock, WAIT)
    raise AssertionError("all of it was sent and the peer did not close")


def test_an_association_request_trickled_in_is_cut_at_the_artim_timeout(
    start: Callable[..., Running],
) -> None:
    running = start(artim_timeout=1.0)
    rq = raw_associate_rq(GW, contexts=CT_CONTEXT)
    with connect(running.port) as sock:
        started = time.monotonic()
        sent, answer = trickle_until_closed(sock, rq, 0.1)
        waited = time.monotonic() - started
    assert sent < len(rq)
    assert answer in (b"", ABORT_NOT_SPECIFIED)
    assert 0.9 <= waited < 1.0 + MARGIN


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    folder = tmp_path_factory.mktemp("pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", "key.pem", "-out", "cert.pem"],
                   cwd=folder, check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    return context


def client_hello() -> bytes:
    """The first bytes a TLS client sends."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_handshake_trickled_in_is_cut_at_the_artim_timeout(
    start: Callable[..., Running], server_tls: ssl.SSLContext,
) -> None:
    running = start(artim_timeout=1.0, ssl_context=server_tls)
    hello = client_hello()
    with connect(running.port) as sock:
        started = time.monotonic()
        sent, _ = trickle_until_closed(sock, hello, 0.1)
        waited = time.monotonic() - started
    assert sent < len(hello)  # hundreds of bytes: 0.1 s each would take half a minute
    assert 0.9 <= waited < 1.0 + MARGIN


def test_after_a_release_the_gateway_waits_for_the_close_until_the_artim_timeout(
    start: Callable[..., Running],
) -> None:
    running = start(artim_timeout=1.0, network_timeout=30.0)
    with associated(running.port, CT_CONTEXT) as sock:
        sock.sendall(bytes((A_RELEASE_RQ, 0, 0, 0, 0, 4)) + bytes(4))
        assert recv_pdu(sock) == (A_RELEASE_RP, bytes(4))
        started = time.monotonic()
        assert read_until_closed(sock, WAIT) == b""  # we never close: the gateway does
        waited = time.monotonic() - started
    assert 0.9 <= waited < 1.0 + MARGIN  # ARTIM, not network_timeout


# --- 5c. a pending connection costs little ---------------------------------------------------------


def test_the_reader_starts_small_and_grows_keeping_what_it_has_buffered() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = PduReader(ours, SMALL_BUFFER)
        assert len(reader.buffer) == SMALL_BUFFER
        theirs.sendall(bytes(range(20)))
        assert bytes(reader.take(4)) == bytes(range(4))
        reader.grow()
        assert len(reader.buffer) == READ_BUFFER
        assert bytes(reader.take(6)) == bytes(range(4, 10))
        reader.skip(5)
        assert reader.read(5) == bytes(range(15, 20))


def test_a_pending_connection_holds_a_small_buffer_until_it_associates(
    start: Callable[..., Running],
) -> None:
    running = start()

    def readers() -> list[int]:
        with running.server._lock:
            return [len(a.reader.buffer) for a in running.server._associations]

    with connect(running.port) as idle:
        assert eventually(lambda: readers() == [SMALL_BUFFER], WAIT, 0.02)
        with associated(running.port, CT_CONTEXT):
            assert eventually(lambda: sorted(readers()) == [SMALL_BUFFER, READ_BUFFER], WAIT, 0.02)
        idle.close()


# --- 5d. dimse_timeout: a deadline per message -----------------------------------------------------


def test_a_pdu_header_trickled_in_is_aborted_at_the_dimse_timeout(
    start: Callable[..., Running],
) -> None:
    running = start(dimse_timeout=1.0, network_timeout=30.0)
    with capture_logs() as logs, associated(running.port, CT_CONTEXT) as sock:
        started = time.monotonic()
        sent, answer = trickle_until_closed(sock, store_command(), 0.25)
        waited = time.monotonic() - started
    assert sent < 6  # not even the header
    assert answer == ABORT_NOT_SPECIFIED
    assert 0.9 <= waited < 1.0 + MARGIN
    assert events(logs, "dimse_timeout")


def test_a_data_set_trickled_in_small_whole_pdus_is_aborted_at_the_dimse_timeout(
    start: Callable[..., Running],
) -> None:
    """Each PDU arrives whole and soon after the last: a timeout per read never fires."""
    running = start(dimse_timeout=1.0, network_timeout=30.0)
    with associated(running.port, CT_CONTEXT) as sock:
        sock.sendall(store_command())
        started = time.monotonic()
        sock.settimeout(0.1)
        answer = b""
        while time.monotonic() - started < WAIT:
            try:
                sock.sendall(data_pdu(b"\x00\x00", last=False))
                answer = sock.recv(1024)
                break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
        waited = time.monotonic() - started
    assert answer in (ABORT_NOT_SPECIFIED, b"")
    assert 0.9 <= waited < 1.0 + MARGIN
    assert running.stored == []


def send_paced(sock: socket.socket, chunks: int, size: int, interval: float) -> None:
    """A C-STORE whose data set comes in ``chunks`` PDUs of ``size`` bytes, one per
    ``interval``; stops quietly if the peer aborts."""
    try:
        sock.sendall(store_command())
        for k in range(chunks):
            time.sleep(interval)
            sock.sendall(data_pdu(bytes(size), last=k == chunks - 1))
    except (ConnectionResetError, BrokenPipeError):
        pass


@pytest.mark.parametrize(("rate_kib", "stored"), [(64, 1), (0, 0)])
def test_a_message_longer_than_dimse_timeout_is_fine_at_the_minimum_rate(
    start: Callable[..., Running], rate_kib: int, stored: int,
) -> None:
    """16 x 64 KiB, one every 0.15 s: 2.4 s for a 1 s dimse_timeout. Each 64 KiB moves the
    deadline 1 s later at 64 KiB/s; with no minimum rate the deadline stays."""
    running = start(dimse_timeout=1.0, min_receive_rate_kib=rate_kib, network_timeout=30.0)
    with associated(running.port, CT_CONTEXT) as sock:
        send_paced(sock, chunks=16, size=64 * 1024, interval=0.15)
        sock.settimeout(WAIT)
        try:
            kind, body = recv_pdu(sock)
        except (ConnectionResetError, AssertionError):
            kind, body = A_ABORT, bytes(4)  # closed before we read the A-ABORT
    assert len(running.stored) == stored
    if stored:
        assert kind == P_DATA_TF and decode_command(body[6:])[0x0900] == b"\x00\x00"
    else:
        assert kind == A_ABORT


# --- 5e. max_instance_mb and receive_memory_mb ------------------------------------------------------


def test_an_instance_over_max_instance_mb_gets_a700_and_the_next_is_stored(
    start: Callable[..., Running], big_ct: Callable[[int], Path],
) -> None:
    running = start(max_instance_mb=1, max_pdu=65536)
    big = big_ct(800)  # 1.28 MB of pixels
    with capture_logs() as logs:
        assoc = scu().associate(LOOPBACK, running.port, contexts=[build_context(CTImageStorage)],
                                ae_title=GW)
        try:
            refused = assoc.send_c_store(pydicom.dcmread(big))
            stored = assoc.send_c_store(pydicom.dcmread(pydicom_file("CT_small.dcm")))
        finally:
            assoc.release()
    assert refused.Status == 0xA700
    assert refused.ErrorComment == "instance larger than max_instance_mb (1 MB)"
    assert stored.Status == 0x0000
    assert [r.sop_instance_uid for r in running.stored] == [
        pydicom.dcmread(pydicom_file("CT_small.dcm")).SOPInstanceUID]
    assert running.server.memory.held == 0
    assert [e["status"] for e in events(logs, "C-STORE refused")] == ["0xA700"]


def test_receive_memory_is_shared_and_a_message_that_fits_never_waits(
    start: Callable[..., Running], big_ct: Callable[[int], Path],
) -> None:
    first_in_handler, release_first = threading.Event(), threading.Event()
    first = pydicom.dcmread(big_ct(600))  # 720 kB of pixels: most of a 1 MB budget

    def handler(request: StoreRequest) -> int:
        if request.sop_instance_uid == first.SOPInstanceUID:
            first_in_handler.set()
            release_first.wait(WAIT)
        return 0x0000

    running = start(handler=handler, receive_memory_mb=1, max_pdu=65536)
    statuses: list[int] = []

    def send(ds: pydicom.Dataset) -> int:
        assoc = scu().associate(LOOPBACK, running.port,
                                contexts=[build_context(CTImageStorage)], ae_title=GW)
        try:
            return int(assoc.send_c_store(ds).Status)
        finally:
            assoc.release()

    holder = threading.Thread(target=lambda: statuses.append(send(first)))
    holder.start()
    try:
        assert first_in_handler.wait(WAIT)
        assert running.server.memory.held >= 720_000
        second = copy.deepcopy(first)
        second.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.5.2"
        assoc = scu().associate(LOOPBACK, running.port, contexts=[build_context(CTImageStorage)],
                                ae_title=GW)
        try:
            busy = assoc.send_c_store(second)
            small = assoc.send_c_store(pydicom.dcmread(pydicom_file("CT_small.dcm")))
        finally:
            assoc.release()
        assert busy.Status == 0xA700
        assert busy.ErrorComment == "gateway busy: receive_memory_mb in use"
        assert small.Status == 0x0000  # answered while the first is still held
        assert not release_first.is_set()
    finally:
        release_first.set()
        holder.join(WAIT)
    assert statuses == [0x0000]
    assert running.server.memory.held == 0
    assert sorted(r.sop_instance_uid for r in running.stored) == sorted(
        [first.SOPInstanceUID, pydicom.dcmread(pydicom_file("CT_small.dcm")).SOPInstanceUID])
