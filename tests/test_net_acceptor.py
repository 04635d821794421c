"""The gateway's own DICOM upper layer (gateway/net/) against real peers: dcmtk
storescu/echoscu/storescp, pynetdicom as the requestor, and raw sockets for what no
well-behaved peer sends. The server runs in-process on a free loopback port; a small TCP relay
(``PduTap``) records the PDUs that cross it, to check fragmentation in each direction."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from netpeers import (
    DCMTK_ENV,
    LOOPBACK,
    ct_template,
    eventually,
    free_port,
    pydicom_file,
    raw_associate_rq,
    read_until_closed,
    recv_pdu,
    requires_dcmtk,
    write_instance,
)
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from gateway.net.acceptor import StoreRequest
from gateway.net.dimse import decode_command, encode_command
from gateway.net.pdu import A_ABORT, A_ASSOCIATE_AC, P_DATA_TF, p_data_tf
from gateway.receive import part10_header

pytestmark = requires_dcmtk
pytest_plugins = ["acceptors"]
if TYPE_CHECKING:
    from acceptors import Running
GW = "DICOM_GW"
WAIT = 10.0
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.10.999.1"


def scu() -> AE:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    return ae


def echoscu(port: int, called: str = GW, calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-v", "-to", "5", "-ta", "5", "-td", "5", "-aet", calling,
                           "-aec", called, LOOPBACK, str(port)],
                          capture_output=True, text=True, timeout=30, env=DCMTK_ENV)


# --- a relay that records PDUs ------------------------------------------------------------------


class PduTap:
    """Relays one connection to ``target_port`` and keeps the bytes of each direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(WAIT)
        self.port = int(self.listener.getsockname()[1])
        self.up = bytearray()  # requestor -> server
        self.down = bytearray()  # server -> requestor
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection((LOOPBACK, self.target_port), timeout=WAIT)
        self.sockets += [client, server]
        for src, dst, into in ((client, server, self.up), (server, client, self.down)):
            src.settimeout(WAIT)
            t = threading.Thread(target=self._pump, args=(src, dst, into), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, into: bytearray) -> None:
        try:
            while data := src.recv(65536):
                into += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for t in self.threads:
            t.join(timeout=WAIT)
        for s in [*self.sockets, self.listener]:
            s.close()

    @staticmethod
    def pdus(stream: bytes) -> list[tuple[int, int]]:
        """(type, length of the variable field) of each PDU in ``stream``."""
        out, position = [], 0
        while position + 6 <= len(stream):
            kind, length = struct.unpack_from(">BxI", stream, position)
            out.append((kind, length))
            position += 6 + length
        assert position == len(stream), "a PDU was cut short"
        return out


def dataset_of_part10(data: bytes) -> bytes:
    """The data set of a Part 10 file (after the file meta group)."""
    assert data[128:132] == b"DICM"
    (group_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + group_length :]


# --- raw-socket helpers ---------------------------------------------------------------------------


def associate_rq(called: str = GW, contexts: tuple[tuple[int, str, str], ...] = ()) -> bytes:
    """A minimal A-ASSOCIATE-RQ (context id, abstract syntax, transfer syntax)."""
    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BxH", kind, len(value)) + value

    body = (b"\x00\x01\x00\x00" + called.encode().ljust(16) + b"RAW".ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1")
            + b"".join(item(0x20, bytes((cid, 0, 0, 0)) + item(0x30, a.encode())
                            + item(0x40, t.encode())) for cid, a, t in contexts)
            + item(0x50, item(0x51, (16384).to_bytes(4, "big"))))
    return struct.pack(">BxI", 0x01, len(body)) + body


# --- association policy ---------------------------------------------------------------------------


def test_unknown_called_ae_title_is_rejected_with_that_reason(start: Callable[..., Running]) -> None:
    running = start()
    result = echoscu(running.port, called="SOMEONE_ELSE")
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    assert echoscu(running.port).returncode == 0  # the right title is accepted


def test_after_a_rejection_the_requestor_closes_the_connection(start: Callable[..., Running]) -> None:
    """PS3.8 Sta13: the acceptor waits for the requestor to close (closing first races the
    requestor's reading of the A-ASSOCIATE-RJ); one that never closes is dropped after ARTIM."""
    running = start(artim_timeout=1.0)
    with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as sock:
        sock.sendall(associate_rq(called="SOMEONE_ELSE"))
        kind, _ = recv_pdu(sock)
        assert kind == 0x03  # A-ASSOCIATE-RJ
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # still open: the gateway waits for us
        started = time.monotonic()
        assert read_until_closed(sock, WAIT) == b""  # until the ARTIM timer (artim_timeout) runs out
        assert 0.2 < time.monotonic() - started < WAIT


def test_calling_ae_title_refused_by_the_policy_is_rejected(start: Callable[..., Running]) -> None:
    running = start(calling_ae_allowed=lambda title, address, subject: title == "ECHOSCU"
                    and address == LOOPBACK)
    refused = echoscu(running.port, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert echoscu(running.port).returncode == 0


def test_more_associations_than_allowed_are_rejected_for_now(start: Callable[..., Running]) -> None:
    running = start(max_associations=1)
    first = scu().associate(LOOPBACK, running.port, contexts=[build_context(Verification)],
                            ae_title=GW)
    try:
        assert first.is_established
        assert running.server.active_associations() == 1
        # The A-ASSOCIATE-RJ read off the wire: pynetdicom now and then reports a rejection
        # that arrived just before the connection closed as an abort (its own race).
        with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as raw:
            raw.sendall(raw_associate_rq(called=GW, contexts=[(1, str(Verification),
                                                               ["1.2.840.10008.1.2"])]))
            kind, body = recv_pdu(raw)
        assert kind == 0x03  # A-ASSOCIATE-RJ
        # transient, service provider (presentation related), local limit exceeded
        assert (body[1], body[2], body[3]) == (2, 3, 2)
        output = echoscu(running.port)
        assert "Local Limit Exceeded" in output.stdout + output.stderr
    finally:
        first.release()
    assert eventually(lambda: running.server.active_associations() == 0, WAIT)
    assert echoscu(running.port).returncode == 0  # a place is free again


def test_contexts_storage_and_verification_accepted_others_rejected(
    start: Callable[..., Running],
) -> None:
    running = start()
    ae = scu()
    contexts = [
        build_context(Verification, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
        build_context(CTImageStorage, ["1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.1"]),
        build_context(PRIVATE_SOP_CLASS, ["1.2.840.10008.1.2.1"]),
        build_context(StudyRootQueryRetrieveInformationModelFind),
    ]
    assoc = ae.associate(LOOPBACK, running.port, contexts=contexts, ae_title=GW)
    try:
        assert assoc.is_established
        accepted = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        # Verification: our preference (implicit VR first); storage: the first proposed
        assert accepted == {
            Verification: "1.2.840.10008.1.2",
            CTImageStorage: "1.2.840.10008.1.2.4.91",
            PRIVATE_SOP_CLASS: "1.2.840.10008.1.2.1",
        }
        rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        assert rejected == {StudyRootQueryRetrieveInformationModelFind: 0x03}
    finally:
        assoc.release()


# --- messages -------------------------------------------------------------------------------------


def test_echo_and_release(start: Callable[..., Running]) -> None:
    running = start()
    result = echoscu(running.port)
    assert result.returncode == 0, result.stdout + result.stderr
    assoc = scu().associate(LOOPBACK, running.port, contexts=[build_context(Verification)],
                            ae_title=GW)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert eventually(lambda: running.server.active_associations() == 0, WAIT)


@pytest.fixture()
def instances(tmp_path: Path) -> list[Path]:
    """A 256x256 CT (128 KiB of pixels: many 4 KiB PDUs) and pydicom's CT_small."""
    template = ct_template()
    template.Rows = template.Columns = 256
    template.PixelData = bytes(range(256)) * 512
    big = write_instance(tmp_path / "src", template, "MRN-UL-1", "Upper^Layer", "1.2.3.4",
                         "1.2.3.4.5").path
    return [big, pydicom_file("CT_small.dcm")]


def test_fragmented_data_sets_arrive_byte_identical_to_what_storescp_gets(
    start: Callable[..., Running], instances: list[Path], tmp_path: Path
) -> None:
    running = start(max_pdu=4096)  # the most we receive in one PDU: the sender must fragment
    tap = PduTap(running.port)
    sent = subprocess.run(["storescu", "-v", "-aec", GW, LOOPBACK, str(tap.port),
                           *map(str, instances)],
                          capture_output=True, text=True, timeout=60, env=DCMTK_ENV)
    tap.close()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(running.stored) == len(instances)
    pdata = [length for kind, length in PduTap.pdus(tap.up) if kind == P_DATA_TF]
    assert len(pdata) > 40 and max(pdata) <= 4096

    # the same files to dcmtk's storescp, keeping what it received bit for bit (+B)
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    storescp = subprocess.Popen(["storescp", "+B", "-aet", "ARCHIVE", "--max-pdu", "4096",
                                 "-od", str(folder), str(port)], env=DCMTK_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert eventually(lambda: echoscu(port, called="ARCHIVE").returncode == 0, WAIT)
        direct = subprocess.run(["storescu", "-aec", "ARCHIVE", LOOPBACK, str(port),
                                 *map(str, instances)],
                                capture_output=True, text=True, timeout=60, env=DCMTK_ENV)
        assert direct.returncode == 0, direct.stdout + direct.stderr
    finally:
        storescp.terminate()
        storescp.wait(timeout=WAIT)
    by_uid = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID),
                                          dataset_of_part10(path.read_bytes()))
    for request in running.stored:
        transfer_syntax, data = by_uid[request.sop_instance_uid]
        assert request.transfer_syntax == transfer_syntax
        assert request.calling_ae == "STORESCU" and request.address == LOOPBACK
        assert request.sop_class_uid == CTImageStorage
        assert bytes(request.dataset) == data

    # and with the file meta the receiver puts in front, pydicom reads it as that instance
    request = running.stored[0]
    ds = pydicom.dcmread(io.BytesIO(
        part10_header(request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax)
        + request.dataset))
    assert ds.file_meta.MediaStorageSOPInstanceUID == request.sop_instance_uid == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == request.transfer_syntax
    assert ds.PatientName == "Upper^Layer"


def test_responses_respect_the_peers_small_max_pdu(start: Callable[..., Running]) -> None:
    running = start()
    tap = PduTap(running.port)
    assoc = scu().associate(
        LOOPBACK, tap.port, contexts=[build_context(Verification), build_context(CTImageStorage)],
        ae_title=GW, max_pdu=64)
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    tap.close()
    down = PduTap.pdus(tap.down)
    assert down[0][0] == A_ASSOCIATE_AC
    pdata = [length for kind, length in down if kind == P_DATA_TF]
    assert len(pdata) >= 5  # two responses of 78 and about 150 bytes
    assert max(pdata) <= 64
    assert len(running.stored) == 1


def test_store_handler_status_is_answered(start: Callable[..., Running]) -> None:
    running = start(handler=lambda request: 0xA700)
    assoc = scu().associate(LOOPBACK, running.port, contexts=[build_context(CTImageStorage)],
                            ae_title=GW)
    try:
        status = assoc.send_c_store(pydicom.dcmread(pydicom_file("CT_small.dcm")))
        assert status.Status == 0xA700
    finally:
        assoc.release()


def test_an_unsupported_dimse_request_gets_a_failure_status(start: Callable[..., Running]) -> None:
    running = start()
    contexts = [build_context(PRIVATE_SOP_CLASS), build_context(Verification)]
    assoc = scu().associate(LOOPBACK, running.port, contexts=contexts, ae_title=GW)
    try:
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel, query.PatientID = "STUDY", "*"
        started = time.monotonic()
        responses = list(assoc.send_c_find(query, PRIVATE_SOP_CLASS))
        assert time.monotonic() - started < WAIT / 2
        assert [(r.Status, identifier) for r, identifier in responses] == [(0x0211, None)]
        assert assoc.send_c_echo().Status == 0x0000  # the association goes on
    finally:
        assoc.release()
    assert running.stored == []


# --- what a broken or silent peer gets -------------------------------------------------------------


def test_garbage_gets_a_abort_and_the_server_serves_others(start: Callable[..., Running]) -> None:
    running = start()
    with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        answer = read_until_closed(sock, WAIT)
    # A-ABORT, source service provider (2), reason unrecognized PDU (1); then closed
    assert answer == bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 1))
    assert echoscu(running.port).returncode == 0

    with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as sock:
        rq = bytearray(associate_rq())
        rq[-9] = 0xFF  # the user information item's length now runs past the PDU
        sock.sendall(rq)
        answer = read_until_closed(sock, WAIT)
    assert answer[:1] == bytes((A_ABORT,)) and answer[8] == 2
    assert echoscu(running.port).returncode == 0


def test_data_on_a_context_that_was_not_accepted_is_aborted(start: Callable[..., Running]) -> None:
    running = start()
    with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as sock:
        sock.sendall(associate_rq(contexts=((1, Verification, "1.2.840.10008.1.2"),)))
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        command = encode_command({0x0100: (0x0030).to_bytes(2, "little"),
                                  0x0110: (1).to_bytes(2, "little"),
                                  0x0800: (0x0101).to_bytes(2, "little")})
        sock.sendall(p_data_tf(3, command, 0))  # context 3 was never proposed
        answer = read_until_closed(sock, WAIT)
    assert answer == bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 6))
    assert running.server.active_associations() == 0 or eventually(
        lambda: running.server.active_associations() == 0, WAIT)


def test_a_silent_peer_is_dropped_after_the_artim_timeout(start: Callable[..., Running]) -> None:
    running = start(artim_timeout=1.0)
    with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as sock:
        started = time.monotonic()
        answer = read_until_closed(sock, timeout=WAIT)
        waited = time.monotonic() - started
    assert 0.8 <= waited < 4.0, waited
    assert answer in (b"", bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 0)))
    assert echoscu(running.port).returncode == 0


def test_an_idle_association_is_aborted_after_the_network_timeout(
    start: Callable[..., Running],
) -> None:
    running = start(network_timeout=1.0)
    assoc = scu().associate(LOOPBACK, running.port, contexts=[build_context(Verification)],
                            ae_title=GW)
    assert assoc.is_established
    assert eventually(lambda: assoc.is_aborted, 5.0, 0.05)
    assert eventually(lambda: running.server.active_associations() == 0, WAIT)


# --- stopping -------------------------------------------------------------------------------------


def test_stop_answers_the_store_in_flight_then_aborts(start: Callable[..., Running]) -> None:
    in_handler, release = threading.Event(), threading.Event()

    def slow(request: StoreRequest) -> int:
        in_handler.set()
        release.wait(WAIT)
        return 0x0000

    running = start(handler=slow)
    idle = scu().associate(LOOPBACK, running.port, contexts=[build_context(Verification)],
                           ae_title=GW)
    busy = scu().associate(LOOPBACK, running.port, contexts=[build_context(CTImageStorage)],
                           ae_title=GW)
    assert idle.is_established and busy.is_established
    statuses: list[int] = []
    sender = threading.Thread(target=lambda: statuses.append(
        int(busy.send_c_store(pydicom.dcmread(pydicom_file("CT_small.dcm"))).Status)))
    sender.start()
    assert in_handler.wait(WAIT)

    stopper = threading.Thread(target=running.server.stop, args=(WAIT,))
    stopper.start()
    # the idle association is aborted at once; the one storing waits for its answer
    assert eventually(lambda: idle.is_aborted, 5.0, 0.05)
    assert not busy.is_aborted and stopper.is_alive()
    assert not eventually(lambda: echoscu(running.port).returncode == 0, 1.0)  # no new ones
    release.set()
    sender.join(WAIT)
    stopper.join(WAIT)
    assert statuses == [0x0000]
    assert eventually(lambda: busy.is_aborted, 5.0, 0.05)
    assert running.server.active_associations() == 0


# --- the codec, without sockets --------------------------------------------------------------------


def test_command_sets_round_trip_with_uids_padded_to_even_length() -> None:
    command = encode_command({0x0002: b"1.2.3\x00", 0x0100: b"\x30\x00"})
    assert len(command) % 2 == 0
    decoded = decode_command(command)
    assert decoded[0x0000] == (len(command) - 12).to_bytes(4, "little")  # group length
    assert decoded[0x0002] == b"1.2.3\x00"
    fragments = PduTap.pdus(p_data_tf(1, command, 16))
    assert all(length <= 16 for _, length in fragments)
    assert len(fragments) == -(-len(command) // 10)


def test_stop_waits_for_a_data_set_that_is_still_arriving(start: Callable[..., Running]) -> None:
    running = start()
    data = dataset_of_part10(pydicom_file("CT_small.dcm").read_bytes())  # explicit VR LE
    sop_uid = b"1.2.826.0.1.3680043.10.999.33\x00"  # odd length: NUL-padded
    with socket.create_connection((LOOPBACK, running.port), timeout=WAIT) as sock:
        sock.sendall(associate_rq(contexts=((1, CTImageStorage, "1.2.840.10008.1.2.1"),)))
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        command = encode_command({0x0002: b"1.2.840.10008.5.1.4.1.1.2\x00",
                                  0x0100: (0x0001).to_bytes(2, "little"),
                                  0x0110: (7).to_bytes(2, "little"),
                                  0x0700: (0).to_bytes(2, "little"),
                                  0x0800: (0).to_bytes(2, "little"), 0x1000: sop_uid})
        sock.sendall(p_data_tf(1, command, 0))
        half = len(data) // 2
        sock.sendall(data_pdu(1, data[:half], last=False))
        time.sleep(0.3)  # the first half is in

        stopper = threading.Thread(target=running.server.stop, args=(WAIT,))
        stopper.start()
        time.sleep(0.5)
        assert stopper.is_alive(), "stop must wait for the message that has begun"
        sock.sendall(data_pdu(1, data[half:], last=True))
        kind, body = recv_pdu(sock)
        assert kind == P_DATA_TF
        assert body[5] == 0x03  # one PDV: the whole command set
        response = decode_command(body[6:])
        assert response[0x0900] == b"\x00\x00"  # success
        assert response[0x0120] == (7).to_bytes(2, "little")
        assert response[0x1000] == sop_uid
        assert recv_pdu(sock) == (A_ABORT, bytes(4))  # then aborted: the server is stopping
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert [len(r.dataset) for r in running.stored] == [len(data)]


def data_pdu(context_id: int, data: bytes, last: bool) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, 0x02 if last else 0x00) + data
    return struct.pack(">BxI", P_DATA_TF, len(pdv)) + pdv

