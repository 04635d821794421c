"""The gateway's own requestor (gateway/net/requestor.py) against real peers: dcmtk storescp (bit
preserving, small PDUs, refusing, aborting), pynetdicom and Orthanc as acceptors, the gateway's
own upper layer with TLS, and raw sockets for a peer that never answers. Then the forwarder's
outcomes through a serving gateway: a silent or aborting archive keeps the entry (TRANSIENT)
until a real archive takes it; an archive that accepts none of the contexts makes a dead letter.

Everything listens on 127.0.0.1 on a free port; every wait is bounded; what a test starts, it
stops.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from netpeers import (
    DCMTK_ENV,
    LOOPBACK,
    Archive,
    DestinationSpec,
    Peers,
    ct_template,
    eventually,
    free_port,
    pydicom_file,
    requires_dcmtk,
    storescu,
    wait_for,
    write_compressed,
    write_instance,
    write_study,
)
from pynetdicom import AE, evt
from test_net_acceptor import PduTap

from gateway.deid.engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.net.acceptor import Server, ServerConfig, StoreRequest, negotiate
from gateway.net.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    P_DATA_TF,
    AssociationRejected,
    ConnectionFailed,
    PeerAborted,
    PeerClosed,
    PeerTimeout,
    encode_abort,
    encode_associate_ac,
    parse_associate_rq,
)
from gateway.net.requestor import FRAGMENT, RequestorConfig, associate
from gateway.net.tls import client_context, server_context
from gateway.receive import part10_header, storage_sop_class
from gateway.settings import TlsSettings
from gateway.spool import part10_dataset

pytestmark = requires_dcmtk
WAIT = 10.0
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000 = "1.2.840.10008.1.2.4.91"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def config(**overrides: object) -> RequestorConfig:
    values: dict[str, object] = {
        "ae_title": "DICOM_GW", "acse_timeout": WAIT, "dimse_timeout": WAIT,
        "network_timeout": WAIT, "implementation_class_uid": IMPLEMENTATION_CLASS_UID,
        "implementation_version_name": IMPLEMENTATION_VERSION_NAME,
    }
    values.update(overrides)
    return RequestorConfig(**values)  # type: ignore[arg-type]


# --- what the spool holds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Spooled:
    """An instance as the gateway's spool holds it: the receiver's file meta, then the data set."""

    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str

    @property
    def pair(self) -> tuple[str, str]:
        return self.sop_class_uid, self.transfer_syntax

    @property
    def dataset(self) -> memoryview:
        return part10_dataset(self.data)


def spooled(path: Path) -> Spooled:
    meta = pydicom.filereader.read_file_meta_info(path)
    sop_class, sop_instance = str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
    syntax = str(meta.TransferSyntaxUID)
    data = part10_header(sop_class, sop_instance, syntax) + part10_dataset(path.read_bytes())
    return Spooled(data, sop_class, sop_instance, syntax)


def big_ct(folder: Path, side: int = 256) -> Path:
    """A CT of ``side`` x ``side`` 16-bit pixels (128 KiB at 256: many 4 KiB PDUs)."""
    template = ct_template()
    template.Rows = template.Columns = side
    template.PixelData = bytes(range(256)) * (side * side * 2 // 256)
    return write_instance(folder, template, "MRN-SCU-1", "Requestor^Test", "1.2.3.4",
                          "1.2.3.4.5").path


# --- peers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def storescp(folder: Path, *options: str) -> Iterator[int]:
    """dcmtk storescp with ``options``, writing into ``folder``; its port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (folder.parent / f"storescp-{port}.log").open("wb")
    process = subprocess.Popen(["storescp", "-v", *options, "-aet", "ARCHIVE", "-od", str(folder),
                                str(port)], stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
    try:
        assert eventually(lambda: process.poll() is None and _listening(port), WAIT)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def received_datasets(folder: Path) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (transfer syntax, data set bytes) of what storescp wrote."""
    out = {}
    for path in folder.iterdir():
        meta = pydicom.filereader.read_file_meta_info(path)
        out[str(meta.MediaStorageSOPInstanceUID)] = (str(meta.TransferSyntaxUID),
                                                     bytes(part10_dataset(path.read_bytes())))
    return out


@dataclass
class RawPeer:
    """A raw-socket acceptor: accepts every association (all contexts, 16 KiB PDUs), then
    ``behave(sock)`` does what a misbehaving archive does. Records what each connection sent."""

    behave: Callable[[socket.socket, RawPeer], None]
    port: int = 0
    associations: int = 0
    aborts_received: int = 0
    bytes_received: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, self.port))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(WAIT)
            try:
                kind, body = recv_pdu(sock)
                assert kind == A_ASSOCIATE_RQ
                rq = parse_associate_rq(body)
                results = negotiate(rq.contexts, storage_sop_class)
                sock.sendall(encode_associate_ac(rq, "ARCHIVE", results, 16384, "1.2.3", "RAW"))
                self.associations += 1
                self.bytes_received.append(0)
                self.behave(sock, self)
            except (OSError, AssertionError):
                pass

    def drain(self, sock: socket.socket, until: Callable[[], bool] = lambda: False) -> None:
        """Read PDUs until the peer closes, ``until()`` holds, or the test ends; count them."""
        while not self.stop.is_set() and not until():
            try:
                kind, body = recv_pdu(sock)
            except TimeoutError:
                continue
            except (OSError, AssertionError):
                return
            self.bytes_received[-1] += 6 + len(body)
            if kind == A_ABORT:
                self.aborts_received += 1

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=WAIT)


@pytest.fixture()
def raw_peers() -> Iterator[Callable[..., RawPeer]]:
    started: list[RawPeer] = []

    def _start(behave: Callable[[socket.socket, RawPeer], None], port: int = 0) -> RawPeer:
        peer = RawPeer(behave, port)
        started.append(peer)
        return peer

    yield _start
    for peer in started:
        peer.close()


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(min(n - len(data), 1 << 20))
            assert chunk, "closed"
            data += chunk
        return bytes(data)

    kind, length = struct.unpack(">BxI", exactly(6))
    return kind, exactly(length)


def silent(sock: socket.socket, peer: RawPeer) -> None:
    """Reads everything, answers nothing."""
    sock.settimeout(0.2)
    peer.drain(sock)


def abort_mid_data_set(sock: socket.socket, peer: RawPeer) -> None:
    """A-ABORT once 20 KiB of the request have arrived, then close."""
    sock.settimeout(0.2)
    peer.drain(sock, until=lambda: peer.bytes_received[-1] > 20_000)
    with contextlib.suppress(OSError):
        sock.sendall(encode_abort(0x02, 0x00))


# --- the client, against real peers ---------------------------------------------------------------


def test_data_sets_arrive_byte_identical_at_storescp_in_pdus_within_its_max(
    tmp_path: Path
) -> None:
    files = [spooled(big_ct(tmp_path / "src")), spooled(pydicom_file("CT_small.dcm")),
             spooled(write_compressed(tmp_path / "src").path)]
    assert files[2].transfer_syntax == JPEG2000
    out = tmp_path / "storescp"
    with storescp(out, "+B", "+xa", "--max-pdu", "4096") as port:
        tap = PduTap(port)
        assoc = associate(config(), LOOPBACK, tap.port, "ARCHIVE", sorted({f.pair for f in files}))
        assert assoc.accepted == {f.pair for f in files}
        assert assoc.peer_max_pdu == 4096
        statuses = [assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax, f.dataset)
                    for f in files]
        assoc.release()
        assert assoc.closed
        tap.close()
        assert eventually(lambda: len(list(out.iterdir())) == len(files), WAIT)
    assert statuses == [0x0000] * len(files)
    got = received_datasets(out)
    for f in files:
        assert got[f.sop_instance_uid] == (f.transfer_syntax, bytes(f.dataset))
    sent = [length for kind, length in PduTap.pdus(tap.up) if kind == P_DATA_TF]
    assert len(sent) > 40  # 128 KiB of pixels alone need 32 PDUs
    assert max(sent) <= 4096
    assert PduTap.pdus(tap.up)[-1] == (0x05, 4)  # A-RELEASE-RQ last


def test_without_a_peer_limit_data_sets_go_in_fragments_of_a_mebibyte(tmp_path: Path) -> None:
    stored: list[StoreRequest] = []

    def on_store(request: StoreRequest) -> int:
        stored.append(request)
        return 0x0000

    port = free_port()
    server = Server(ServerConfig("GW_PEER", LOOPBACK, port, max_pdu=0,
                                 storage_sop_class=storage_sop_class), on_store).start()
    try:
        f = spooled(big_ct(tmp_path / "src", side=1200))  # 2.9 MB of pixels
        tap = PduTap(port)
        assoc = associate(config(), LOOPBACK, tap.port, "GW_PEER", [f.pair])
        assert assoc.peer_max_pdu == 0
        assert assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax,
                           f.dataset) == 0x0000
        assoc.release()
        tap.close()
    finally:
        server.stop(2.0)
    assert bytes(stored[0].dataset) == bytes(f.dataset)
    sizes = [length for kind, length in PduTap.pdus(tap.up) if kind == P_DATA_TF]
    # the command, then the data set in 1 MiB fragments: 3 of them for 2.9 MB
    assert len(sizes) == 1 + -(-len(f.dataset) // FRAGMENT)
    assert max(sizes) == FRAGMENT + 6


def test_the_association_request_says_who_we_are(tmp_path: Path) -> None:
    """pynetdicom as the acceptor reads our A-ASSOCIATE-RQ: titles, max PDU, implementation,
    one odd context ID per pair; and answers our C-ECHO and C-STORE."""
    seen: dict[str, object] = {}

    def on_echo(event: evt.Event) -> int:
        requestor = event.assoc.requestor
        seen.update(calling=requestor.ae_title, max_pdu=requestor.maximum_length,
                    class_uid=requestor.implementation_class_uid,
                    version=requestor.implementation_version_name,
                    called=event.assoc.acceptor.ae_title,
                    contexts=sorted((cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax))
                                    for cx in requestor.requested_contexts))
        return 0x0000

    stored: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.encoded_dataset(include_meta=False))
        return 0xB000  # a warning: still stored

    ae = AE(ae_title="PYNETDICOM")
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(CT, [EXPLICIT_LE])
    port = free_port()
    server = ae.start_server((LOOPBACK, port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, on_store)])
    try:
        f = spooled(pydicom_file("CT_small.dcm"))
        assoc = associate(config(max_pdu=65536), LOOPBACK, port, "PYNETDICOM",
                          [(VERIFICATION, IMPLICIT_LE), f.pair])
        assert assoc.echo() == 0x0000
        assert assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax,
                           f.dataset) == 0xB000
        assoc.release()
    finally:
        server.shutdown()
    assert seen == {
        "calling": "DICOM_GW", "called": "PYNETDICOM", "max_pdu": 65536,
        "class_uid": IMPLEMENTATION_CLASS_UID, "version": IMPLEMENTATION_VERSION_NAME,
        "contexts": [(1, VERIFICATION, (IMPLICIT_LE,)), (3, CT, (EXPLICIT_LE,))],
    }
    assert stored == [bytes(f.dataset)]


def test_a_peer_that_refuses_the_association_is_a_rejection(tmp_path: Path) -> None:
    with storescp(tmp_path / "out", "--refuse") as port, \
            pytest.raises(AssociationRejected) as refused:
        associate(config(), LOOPBACK, port, "ARCHIVE", [(CT, EXPLICIT_LE)])
    assert refused.value.permanent
    assert refused.value.describe().startswith("permanent, service-user")


def test_a_wrong_called_ae_title_is_rejected_with_that_reason() -> None:
    port = free_port()
    server = Server(ServerConfig("GW_PEER", LOOPBACK, port), lambda _request: 0).start()
    try:
        with pytest.raises(AssociationRejected) as rejected:
            associate(config(), LOOPBACK, port, "SOMEONE_ELSE", [(CT, EXPLICIT_LE)])
    finally:
        server.stop(2.0)
    assert rejected.value.describe() == "permanent, service-user: called AE title not recognized"


def test_contexts_the_peer_rejects_are_not_accepted(tmp_path: Path) -> None:
    """storescp without +xa takes uncompressed syntaxes only."""
    f = spooled(pydicom_file("CT_small.dcm"))
    with storescp(tmp_path / "out") as port:
        none = associate(config(), LOOPBACK, port, "ARCHIVE", [(CT, JPEG2000)])
        assert none.accepted == frozenset()
        none.release()
        some = associate(config(), LOOPBACK, port, "ARCHIVE", [(CT, EXPLICIT_LE), (CT, JPEG2000)])
        assert some.accepted == {(CT, EXPLICIT_LE)}
        assert not some.accepts(CT, JPEG2000)
        with pytest.raises(ValueError, match="no accepted presentation context"):
            some.store(CT, "1.2.3.4.5.6", JPEG2000, b"")
        assert some.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax,
                          f.dataset) == 0x0000
        some.release()


def test_no_connection_is_a_connection_failure() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        associate(config(), LOOPBACK, free_port(), "ARCHIVE", [(CT, EXPLICIT_LE)])
    assert time.monotonic() - started < WAIT


def test_a_peer_that_never_answers_the_store_times_out_and_is_aborted(
    raw_peers: Callable[..., RawPeer]
) -> None:
    peer = raw_peers(silent)
    f = spooled(pydicom_file("CT_small.dcm"))
    assoc = associate(config(dimse_timeout=1.0), LOOPBACK, peer.port, "ARCHIVE", [f.pair])
    started = time.monotonic()
    with pytest.raises(PeerTimeout):
        assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax, f.dataset)
    assert 0.9 <= time.monotonic() - started < 5.0  # bounded by the DIMSE timeout
    assert assoc.closed and not assoc.alive()
    assert eventually(lambda: peer.aborts_received == 1, WAIT)  # we said A-ABORT
    assert peer.bytes_received[0] > len(f.dataset)  # the whole request went out first


def test_a_peer_that_aborts_mid_store_ends_the_association_at_once(
    raw_peers: Callable[..., RawPeer], tmp_path: Path
) -> None:
    peer = raw_peers(abort_mid_data_set)
    f = spooled(big_ct(tmp_path / "src", side=2048))  # 8 MB: still sending when the abort comes
    assoc = associate(config(), LOOPBACK, peer.port, "ARCHIVE", [f.pair])
    started = time.monotonic()
    with pytest.raises((PeerAborted, PeerClosed)):
        assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax, f.dataset)
    assert time.monotonic() - started < WAIT / 2  # not a timeout
    assert assoc.closed


def test_storescp_aborting_during_the_store_ends_the_association(tmp_path: Path) -> None:
    f = spooled(big_ct(tmp_path / "src", side=1024))
    with storescp(tmp_path / "out", "--abort-during") as port:
        assoc = associate(config(), LOOPBACK, port, "ARCHIVE", [f.pair])
        with pytest.raises((PeerAborted, PeerClosed)):
            assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax, f.dataset)
        assert assoc.closed


def test_an_association_the_peer_ended_while_idle_is_not_alive(
    raw_peers: Callable[..., RawPeer]
) -> None:
    def abort_when_idle(sock: socket.socket, _peer: RawPeer) -> None:
        time.sleep(0.3)
        sock.sendall(encode_abort(0x00, 0x00))

    peer = raw_peers(abort_when_idle)
    assoc = associate(config(), LOOPBACK, peer.port, "ARCHIVE", [(CT, EXPLICIT_LE)])
    assert assoc.alive()
    assert eventually(lambda: not assoc.alive(), WAIT, interval=0.05)
    assoc.abort()
    assert assoc.closed


# --- TLS, to the gateway's own listener -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA and a certificate for 127.0.0.1 (and localhost)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=server")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return d


def test_tls_to_the_gateways_own_listener(pki: Path, tmp_path: Path) -> None:
    tls = TlsSettings(enabled=True, certificate=pki / "server.pem",
                      private_key=pki / "server.key", ca_certificates=pki / "ca.pem")
    stored: list[StoreRequest] = []

    def on_store(request: StoreRequest) -> int:
        stored.append(request)
        return 0x0000

    port = free_port()
    server = Server(ServerConfig("GW_PEER", LOOPBACK, port, max_pdu=16384,
                                 ssl_context=server_context(tls),
                                 storage_sop_class=storage_sop_class), on_store).start()
    try:
        f = spooled(big_ct(tmp_path / "src"))
        assoc = associate(config(), LOOPBACK, port, "GW_PEER", [f.pair],
                          client_context(tls), "localhost")
        assert assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax,
                           f.dataset) == 0x0000
        assoc.release()
        # the certificate names 127.0.0.1 and localhost, nothing else
        with pytest.raises(ConnectionFailed, match="certificate is not accepted: Hostname mismatch"):
            associate(config(), LOOPBACK, port, "GW_PEER", [f.pair], client_context(tls),
                      "archive.example.org")
        # a plain association to the TLS port gets no answer it understands
        with pytest.raises((PeerClosed, PeerTimeout, ConnectionFailed)):
            associate(config(acse_timeout=2.0), LOOPBACK, port, "GW_PEER", [f.pair])
    finally:
        server.stop(2.0)
    assert len(stored) == 1
    assert bytes(stored[0].dataset) == bytes(f.dataset)
    assert stored[0].calling_ae == "DICOM_GW"


# --- Orthanc as the archive -----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="needs the Debian orthanc package")
def test_orthanc_takes_echo_and_stores(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    (tmp_path / "db").mkdir()
    (tmp_path / "orthanc.json").write_text(json.dumps({
        "Name": "TEST_ARCHIVE", "StorageDirectory": str(tmp_path / "db"),
        "IndexDirectory": str(tmp_path / "db"), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [],
    }))
    orthanc = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{LOOPBACK}:{http_port}"

    def instances() -> list[str]:
        with urllib.request.urlopen(f"{url}/instances?expand", timeout=WAIT) as response:
            return [i["MainDicomTags"]["SOPInstanceUID"] for i in json.loads(response.read())]

    try:
        assert eventually(lambda: _listening(dicom_port) and _listening(http_port), 60)
        files = [spooled(big_ct(tmp_path / "src")), spooled(write_compressed(tmp_path / "src").path)]
        assoc = associate(config(), LOOPBACK, dicom_port, "ORTHANC",
                          [(VERIFICATION, IMPLICIT_LE), *sorted({f.pair for f in files})])
        assert assoc.echo() == 0x0000
        assert [assoc.store(f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax, f.dataset)
                for f in files] == [0x0000, 0x0000]
        assoc.release()
        assert sorted(instances()) == sorted(f.sop_instance_uid for f in files)
    finally:
        orthanc.terminate()
        try:
            orthanc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            orthanc.kill()
            orthanc.wait(timeout=WAIT)


# --- the forwarder's outcomes, through a serving gateway -----------------------------------------


@pytest.mark.parametrize("fault", ["silent", "abort"])
def test_an_archive_that_never_answers_or_aborts_keeps_the_entry_until_a_real_one_takes_it(
    peers: Peers, raw_peers: Callable[..., RawPeer], tmp_path: Path, fault: str
) -> None:
    bad = raw_peers(silent if fault == "silent" else abort_mid_data_set)
    gateway = peers.gateway([DestinationSpec("archive", bad.port)], gateway_extra="dimse_timeout = 1")
    study = write_study(tmp_path / "src", "MRN-FAULT-1", "Faulty^Archive", series=1, per_series=1)
    assert storescu(gateway.port, study.paths).returncode == 0

    # the store fails, the association is aborted, and the gateway tries again (a new one)
    wait_for(lambda: bad.associations >= 2, 20, "a second association after the failure")
    report = gateway.status()
    assert report["pending"] == 1 and report["forwarded"] == 0 and report["dead_lettered"] == 0
    lost = [json.loads(line) for line in gateway.stderr().splitlines()
            if '"association lost"' in line]
    expected = {"silent": {"PeerTimeout"}, "abort": {"PeerAborted", "PeerClosed"}}[fault]
    assert lost and {entry["error"] for entry in lost} <= expected, lost
    if fault == "silent":
        assert bad.aborts_received >= 1  # we ended the stalled association with A-ABORT

    # the same port, now a real archive: the kept entry arrives
    bad.close()
    archive = Archive(tmp_path / "archive", bad.port)
    peers.archives.append(archive)
    archive.start()
    report = gateway.wait_forwarded(1, timeout=30)
    assert report["pending"] == 0 and report["dead_lettered"] == 0
    (received,) = archive.datasets()
    assert received.PatientIdentityRemoved == "YES"
    assert gateway.stop() == 0


def test_an_archive_that_accepts_none_of_the_contexts_makes_a_dead_letter(
    peers: Peers, tmp_path: Path
) -> None:
    archive = peers.archive(accept_all=False)  # uncompressed transfer syntaxes only
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra="convert = false")
    j2k = write_compressed(tmp_path / "src")
    assert storescu(gateway.port, [j2k.path]).returncode == 0
    report = gateway.wait_status(30, "a dead letter",
                                 lambda r: r["pending"] == 0 and r["dead_lettered"] == 1)
    assert report["forwarded"] == 0
    (record,) = gateway.quarantine()
    assert record["message"] == ("archive accepts none of: JPEG 2000 Image Compression for "
                                 "SecondaryCaptureImageStorage")
    assert archive.files() == []
    assert gateway.stop() == 0
