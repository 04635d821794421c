"""Hostile peers against the real gateway (``serve`` as a subprocess), issue 14: an idle
flood, a slowloris sender and an instance over ``max_instance_mb``. What a sender sees is
checked with dcmtk and pynetdicom; what the gateway holds, with its /proc status (VmRSS now,
VmHWM at its peak)."""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path

import pydicom
from netpeers import (
    GATEWAY_AE,
    LOOPBACK,
    DestinationSpec,
    GatewayProcess,
    Peers,
    ct_template,
    echo,
    memory_kib,
    raise_open_files_limit,
    raw_associate_rq,
    read_until_closed,
    recv_pdu,
    requires_dcmtk,
    storescu,
    write_instance,
    write_study,
)
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from gateway.net.dimse import c_store_rq
from gateway.net.pdu import A_ABORT, A_ASSOCIATE_AC, p_data_tf

pytestmark = requires_dcmtk
WAIT = 10.0
MARGIN = 3.0  # seconds a timer may fire late on a loaded machine
MB = 1024  # KiB
IDLE_SOCKETS = 1000
ABORT_NOT_SPECIFIED = bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 0))


def gateway_with(peers: Peers, settings: str) -> GatewayProcess:
    """The gateway, forwarding to a dcmtk archive, with ``settings`` in its [gateway] section."""
    archive = peers.archive()
    return peers.gateway([DestinationSpec("archive", archive.port)], gateway_extra=settings)


def pid_of(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return gateway.process.pid


def closed_by_peer(sockets: list[socket.socket], deadline: float) -> int:
    """How many of ``sockets`` the peer has closed (an A-ABORT first is fine) by
    ``deadline``, waiting until all are or the deadline passes."""
    open_ = len(sockets)
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        while open_ and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(timeout=remaining):
                sock = key.data
                try:
                    if sock.recv(4096):
                        continue  # the A-ABORT of an ARTIM timeout; the close follows
                except ConnectionResetError:
                    pass
                except BlockingIOError:
                    continue
                selector.unregister(sock)
                open_ -= 1
    return len(sockets) - open_


def test_a_thousand_idle_connections_lock_no_sender_out_and_cost_little_memory(
    peers: Peers, tmp_path: Path,
) -> None:
    raise_open_files_limit(IDLE_SOCKETS + 512)
    gateway = gateway_with(peers, "artim_timeout = 2")
    study = write_study(tmp_path / "src", "MRN-FLOOD", "Idle^Flood", series=1, per_series=2)
    warm_up = storescu(gateway.port, study.paths[:1])  # code paths loaded before measuring
    assert warm_up.returncode == 0, warm_up.output[-2000:]
    before = memory_kib(pid_of(gateway))

    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_SOCKETS):
            idle.append(socket.create_connection((LOOPBACK, gateway.port), timeout=WAIT))
        flooded = time.monotonic()
        assert echo(gateway.port, GATEWAY_AE)
        sent = storescu(gateway.port, study.paths[1:])
        assert sent.returncode == 0, sent.output[-2000:]
        assert len(sent.acknowledged()) == 1
        during = memory_kib(pid_of(gateway))
        # the oldest were closed as newer ones came (max_pending_connections, 32); the last
        # ones at their ARTIM timer
        closed = closed_by_peer(idle, flooded + 2 + MARGIN)
    finally:
        for sock in idle:
            sock.close()
    assert closed == IDLE_SOCKETS
    assert during - before < 60 * MB, f"RSS {before} -> {during} KiB"
    assert gateway.answers_echo()
    assert "max_pending_connections" in gateway.stderr()


def test_a_slowloris_sender_is_aborted_at_the_dimse_timeout(peers: Peers) -> None:
    gateway = gateway_with(peers, "dimse_timeout = 2\nnetwork_timeout = 60")
    with socket.create_connection((LOOPBACK, gateway.port), timeout=WAIT) as sock:
        sock.sendall(raw_associate_rq(GATEWAY_AE, contexts=((1, CTImageStorage,
                                                            ("1.2.840.10008.1.2.1",)),)))
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        message = p_data_tf(1, c_store_rq(1, CTImageStorage, "1.2.826.0.1.3680043.10.999.6.1"), 0)
        sock.settimeout(0.5)
        started = time.monotonic()
        answer = b""
        for byte in message:  # one byte every 0.5 s: a few bytes a second, forever
            try:
                sock.sendall(bytes((byte,)))
                answer = sock.recv(1024) + read_until_closed(sock, WAIT)
                break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
        waited = time.monotonic() - started
    assert answer in (ABORT_NOT_SPECIFIED, b"")
    assert 1.9 <= waited < 2.0 + MARGIN
    assert "dimse_timeout" in gateway.stderr()
    assert gateway.answers_echo()


def test_an_instance_over_max_instance_mb_is_refused_without_the_gateway_growing(
    peers: Peers, tmp_path: Path,
) -> None:
    gateway = gateway_with(peers, "max_instance_mb = 4\nmax_pdu = 262144")
    template = ct_template()
    template.Rows = template.Columns = 4480  # 40 MB of pixels
    template.PixelData = bytes(4480 * 4480 * 2)
    big = write_instance(tmp_path / "src", template, "MRN-BIG", "Big^Instance", "1.2.3.9",
                         "1.2.3.9.1").path
    del template
    small = write_study(tmp_path / "src", "MRN-BIG", "Big^Instance", series=1, per_series=2).paths
    warm_up = storescu(gateway.port, small[:1])
    assert warm_up.returncode == 0, warm_up.output[-2000:]
    pid = pid_of(gateway)
    peak_before = memory_kib(pid, "VmHWM")

    syntax = pydicom.dcmread(big, stop_before_pixels=True).file_meta.TransferSyntaxUID
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # from the file, not from memory
    try:
        assoc = ae.associate(LOOPBACK, gateway.port,
                             contexts=[build_context(CTImageStorage, [syntax])], ae_title=GATEWAY_AE)
        assert assoc.is_established
        try:
            refused = assoc.send_c_store(big)
            stored = assoc.send_c_store(small[1])  # the same association goes on
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    assert refused.Status == 0xA700
    assert refused.ErrorComment == "instance larger than max_instance_mb (4 MB)"
    assert stored.Status == 0x0000
    peak_after = memory_kib(pid, "VmHWM")
    assert peak_after - peak_before < 20 * MB, f"peak RSS {peak_before} -> {peak_after} KiB"
    report = gateway.status()
    assert report["received"] == 2  # the warm-up and the one after the refusal
