"""The association requestor: the gateway's outbound associations (C-STORE and C-ECHO SCU).

An association belongs to the thread that opened it (a forwarder): it writes a request, then
reads its response on a blocking socket, one operation at a time. Nothing runs in the
background and nothing polls. The PDU and command set codec and the PDU reader are those of
``gateway/net/pdu.py``. Every wait on the peer is bounded:

- ``acse_timeout``: connecting, the TLS handshake and the A-ASSOCIATE-AC, all together; the
  A-RELEASE-RP;
- ``dimse_timeout``: the response to a request, counted from the end of the request;
- ``network_timeout``: each write (a peer that stops reading).

Data sets go out as they are, never decoded: fragments of the caller's buffer (memoryview
slices, no copies) within the peer's maximum PDU length, all the PDUs of a data set handed to
the kernel in as few ``sendmsg`` calls as the socket buffer allows (through TLS, one record per
PDU).

Any failure (a timeout, a broken connection, A-ABORT from the peer, an answer that makes no
sense) aborts the association (A-ABORT sent if the connection still takes it), closes the socket
and raises one of the UpperLayerError classes listed in ``gateway/net/pdu.py``: the
association cannot be used after that.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.files import write_pieces
from gateway.net.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID_RESPONDED_TO,
    NO_DATA_SET,
    RESPONSE_BIT,
    STATUS,
    Command,
    c_echo_rq,
    c_store_rq,
    command_us,
    decode_command,
)
from gateway.net.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    ABORT_SERVICE_USER,
    CONTEXT_ACCEPTED,
    MAX_ASSOCIATE_RQ_LENGTH,
    P_DATA_TF,
    PDV_OVERHEAD,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PDU,
    RELEASE_RQ,
    VERIFICATION,
    AssociationRejected,
    ConnectionFailed,
    ContextResult,
    PeerAborted,
    PeerClosed,
    PeerTimeout,
    ProposedContext,
    ProtocolError,
    UpperLayerError,
    encode_abort,
    encode_associate_rq,
    p_data_header,
    p_data_tf,
    parse_abort,
    parse_associate_ac,
    parse_associate_rj,
)
from gateway.net.reader import PduReader
from gateway.net.tls import handshake_failure

MAX_CONTEXTS = 128  # presentation context IDs are the odd numbers 1-255
FRAGMENT = 1 << 20  # data set bytes per PDV at most (also when the peer sets no limit)
ABORT_TIMEOUT = 1.0  # seconds: A-ABORT is a courtesy, never worth a long wait
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

Pair = tuple[str, str]  # (SOP class UID, transfer syntax UID): one presentation context
# (SOP class UID, transfer syntax UIDs in our order of preference): one presentation context
Proposal = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class NegotiatedContext:
    """A presentation context we proposed and what the peer answered."""

    id: int
    sop_class_uid: str
    proposed: tuple[str, ...]  # the transfer syntaxes, in our order of preference
    result: int | None  # PS3.8 9.3.3.2 (0 accepted, 3 abstract syntax, 4 transfer syntaxes
    # not supported); None: not answered
    transfer_syntax: str = ""  # the one the peer chose: one we proposed ("" unless accepted)

    @property
    def accepted(self) -> bool:
        return bool(self.transfer_syntax)


@dataclass(frozen=True)
class RequestorConfig:
    ae_title: str  # ours: the calling AE title
    max_pdu: int = 0  # what we announce we receive; 0: no limit
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


def associate(
    config: RequestorConfig,
    host: str,
    port: int,
    called_ae: str,
    contexts: Sequence[Pair | Proposal],
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Association:
    """An association with ``called_ae`` at ``host:port``, proposing one presentation context
    per item of ``contexts`` (at most MAX_CONTEXTS): a (SOP class, transfer syntax) pair, or a
    (SOP class, transfer syntaxes) proposal for the peer to choose one of. A SOP class may have
    several contexts.

    The association may come back with none of them accepted: see ``accepted`` and
    ``contexts``. Raises ConnectionFailed, PeerTimeout, AssociationRejected, PeerAborted,
    PeerClosed or ProtocolError.
    """
    if not 0 < len(contexts) <= MAX_CONTEXTS:
        raise ValueError(f"an association proposes 1 to {MAX_CONTEXTS} presentation contexts")
    proposed = [ProposedContext(2 * index + 1, sop_class, _syntaxes(offered))
                for index, (sop_class, offered) in enumerate(contexts)]
    deadline = time.monotonic() + config.acse_timeout
    try:
        sock = socket.create_connection((host, port), timeout=config.acse_timeout)
    except TimeoutError as exc:
        raise PeerTimeout("no connection within the ACSE timeout") from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect ({exc.strerror or type(exc).__name__})") from exc
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = _tls(sock, ssl_context, server_hostname or host, deadline)
        reader = PduReader(sock)
        reader.deadline = deadline
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(encode_associate_rq(called_ae, config.ae_title, proposed, config.max_pdu,
                                         config.implementation_class_uid,
                                         config.implementation_version_name))
        kind, length = reader.pdu_header()
        if length > MAX_ASSOCIATE_RQ_LENGTH:
            raise ProtocolError("association answer too long")
        body = reader.read(length)
        reader.deadline = None
        if kind == A_ASSOCIATE_RJ:
            raise AssociationRejected(*parse_associate_rj(body))
        if kind == A_ABORT:
            raise _aborted(body)
        if kind != A_ASSOCIATE_AC:
            raise ProtocolError(f"PDU type 0x{kind:02X} instead of an association answer",
                                REASON_UNEXPECTED_PDU)
        accept = parse_associate_ac(body)
    except BaseException as exc:
        if isinstance(exc, ProtocolError):
            _send_abort(sock, ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        sock.close()
        if isinstance(exc, TimeoutError):
            raise PeerTimeout("no association answer within the ACSE timeout") from exc
        if isinstance(exc, OSError) and not isinstance(exc, UpperLayerError):
            raise PeerClosed(f"connection lost while associating ({type(exc).__name__})") from exc
        raise
    return Association(sock, reader, config, _negotiated(proposed, accept.contexts),
                       accept.max_pdu)


def _syntaxes(offered: str | tuple[str, ...]) -> tuple[str, ...]:
    syntaxes = (offered,) if isinstance(offered, str) else tuple(offered)
    if not syntaxes:
        raise ValueError("a presentation context proposes at least one transfer syntax")
    return syntaxes


def _negotiated(proposed: Sequence[ProposedContext],
                results: Sequence[ContextResult]) -> tuple[NegotiatedContext, ...]:
    """Each proposed context with the peer's answer. An acceptance with a transfer syntax we did
    not propose for that context counts as a rejection: we cannot send in it."""
    answers = {r.id: r for r in results}
    out = []
    for cx in proposed:
        answer = answers.get(cx.id)
        result = None if answer is None else answer.result
        chosen = ""
        if (answer is not None and result == CONTEXT_ACCEPTED
                and answer.transfer_syntax in cx.transfer_syntaxes):
            chosen = answer.transfer_syntax
        out.append(NegotiatedContext(cx.id, cx.abstract_syntax, cx.transfer_syntaxes, result,
                                     chosen))
    return tuple(out)


def _tls(sock: socket.socket, context: ssl.SSLContext, server_hostname: str,
         deadline: float) -> ssl.SSLSocket:
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except (ssl.SSLError, ConnectionError) as exc:  # a timeout is not one: it becomes PeerTimeout
        raise ConnectionFailed(handshake_failure(exc, server_hostname)) from exc


def _aborted(body: bytes) -> PeerAborted:
    source, reason = parse_abort(body)
    return PeerAborted(f"A-ABORT (source {source}, reason {reason})")


def _send_abort(sock: socket.socket, source: int, reason: int) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(ABORT_TIMEOUT)
        sock.sendall(encode_abort(source, reason))


class Association:
    """An established association; made by ``associate``."""

    def __init__(self, sock: socket.socket, reader: PduReader, config: RequestorConfig,
                 contexts: tuple[NegotiatedContext, ...], peer_max_pdu: int) -> None:
        self._sock = sock
        self._reader = reader
        self._config = config
        self.contexts = contexts  # every proposed context, with the peer's answer
        self._accepted: dict[Pair, int] = {}
        for cx in contexts:
            if cx.accepted:
                self._accepted.setdefault((cx.sop_class_uid, cx.transfer_syntax), cx.id)
        self._context_ids = frozenset(cx.id for cx in contexts if cx.accepted)
        self.peer_max_pdu = peer_max_pdu  # 0: no limit
        room = peer_max_pdu - PDV_OVERHEAD if peer_max_pdu else FRAGMENT
        self._fragment = max(1, min(room, FRAGMENT))
        self._tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self._message_id = 0
        self.closed = False

    @property
    def accepted(self) -> frozenset[Pair]:
        """The (SOP class, transfer syntax) pairs the peer accepted."""
        return frozenset(self._accepted)

    def accepts(self, sop_class_uid: str, transfer_syntax: str) -> bool:
        """Whether some accepted context carries this SOP class in this transfer syntax."""
        return (sop_class_uid, transfer_syntax) in self._accepted

    def alive(self) -> bool:
        """Open, and nothing arrived from the peer since the last response. An idle peer sends
        nothing; when it has sent something (A-ABORT, A-RELEASE-RQ, end of stream), the
        association is over and must not be used."""
        if self.closed:
            return False
        if self._reader.buffered() or (self._tls is not None and self._tls.pending()):
            return False
        poller = select.poll()
        try:
            poller.register(self._sock, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    # --- DIMSE ---

    def store(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
              dataset: bytes | bytearray | memoryview) -> int:
        """C-STORE ``dataset`` (encoded in ``transfer_syntax``, sent as it is); the response's
        status. A ValueError if the pair was not accepted."""
        context_id = self._context_id(sop_class_uid, transfer_syntax)
        message_id = self._next_message_id()
        with self._ending_on_failure():
            self._write(p_data_tf(context_id, c_store_rq(message_id, sop_class_uid,
                                                         sop_instance_uid), self.peer_max_pdu))
            self._write_dataset(context_id, memoryview(dataset))
            return self._response_status(message_id, C_STORE_RQ)

    def echo(self) -> int:
        """C-ECHO; the response's status. A ValueError if Verification was not accepted."""
        context_id = next((cid for (sop_class, _), cid in self._accepted.items()
                           if sop_class == VERIFICATION), None)
        if context_id is None:
            raise ValueError("Verification was not accepted")
        message_id = self._next_message_id()
        with self._ending_on_failure():
            self._write(p_data_tf(context_id, c_echo_rq(message_id), self.peer_max_pdu))
            return self._response_status(message_id, C_ECHO_RQ)

    # --- ending ---

    def release(self) -> None:
        """A-RELEASE-RQ and its A-RELEASE-RP (within the ACSE timeout); A-ABORT if the peer
        answers anything else or nothing. Never raises."""
        if self.closed:
            return
        reader = self._reader
        try:
            self._write(RELEASE_RQ)
            reader.deadline = time.monotonic() + self._config.acse_timeout
            kind, length = reader.pdu_header()
            if kind == A_ABORT:
                self._close()
                return
            if kind != A_RELEASE_RP or length != 4:
                raise ProtocolError("expected A-RELEASE-RP", REASON_UNEXPECTED_PDU)
            reader.read(length)
        except (UpperLayerError, OSError):
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        """A-ABORT (if the connection takes it within a second) and close. Never raises."""
        if self.closed:
            return
        _send_abort(self._sock, ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        self._close()

    def _close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

    # --- the wire ---

    def _context_id(self, sop_class_uid: str, transfer_syntax: str) -> int:
        context_id = self._accepted.get((sop_class_uid, transfer_syntax))
        if context_id is None:
            raise ValueError("no accepted presentation context for this SOP class and "
                             "transfer syntax")
        if self.closed:
            raise PeerClosed("the association has ended")
        return context_id

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    @contextlib.contextmanager
    def _ending_on_failure(self) -> Iterator[None]:
        """Whatever goes wrong ends the association: abort, close, raise an UpperLayerError."""
        try:
            yield
        except (PeerAborted, PeerClosed):
            self._close()
            raise
        except UpperLayerError:
            self.abort()
            raise
        except TimeoutError as exc:
            self.abort()
            raise PeerTimeout("the peer did not answer (or read) in time") from exc
        except OSError as exc:
            self._close()
            raise PeerClosed(f"connection lost ({type(exc).__name__})") from exc

    def _write(self, data: bytes) -> None:
        self._reader.set_timeout(self._config.network_timeout)
        self._sock.sendall(data)

    def _write_dataset(self, context_id: int, dataset: memoryview) -> None:
        """``dataset`` as data PDVs, one per P-DATA-TF, each within the peer's limit."""
        self._reader.set_timeout(self._config.network_timeout)
        sock, room, total = self._sock, self._fragment, len(dataset)
        pieces: list[bytes | memoryview] = []
        start = 0
        while True:
            end = min(start + room, total)
            header = p_data_header(context_id, end - start, command=False, last=end == total)
            if self._tls is None:
                pieces += (header, dataset[start:end])
            else:
                sock.sendall(header + dataset[start:end])  # one TLS record per PDU
            if end == total:
                break
            start = end
        # All the PDUs in as few system calls as the socket buffer allows.
        write_pieces(sock.sendmsg, pieces)

    def _response_status(self, message_id: int, request: int) -> int:
        reader = self._reader
        reader.deadline = time.monotonic() + self._config.dimse_timeout
        try:
            command = self._read_command()
        finally:
            reader.deadline = None
        if command_us(command, COMMAND_FIELD) != request | RESPONSE_BIT:
            raise ProtocolError("a response to another kind of request")
        if command_us(command, MESSAGE_ID_RESPONDED_TO) != message_id:
            raise ProtocolError("a response to another message")
        if command_us(command, COMMAND_DATA_SET_TYPE) != NO_DATA_SET:
            raise ProtocolError("a response with a data set")
        status = command_us(command, STATUS)
        if status is None:
            raise ProtocolError("a response without a status")
        return status

    def _read_command(self) -> Command:
        """The next message, which must be a command set alone (a response)."""
        reader = self._reader
        command = bytearray()
        while True:
            kind, length = reader.pdu_header()
            if kind == A_ABORT:
                raise _aborted(reader.read(length) if length == 4 else b"")
            if kind != P_DATA_TF:
                raise ProtocolError(f"unexpected PDU type 0x{kind:02X}", REASON_UNEXPECTED_PDU)
            while length:
                value_length, _, flags = reader.pdv_header(length, self._context_ids)
                length -= value_length + 6
                if not flags & 0x01:
                    raise ProtocolError("a data set where a response was expected")
                reader.append_to(command, value_length)
                if flags & 0x02:
                    if length:
                        raise ProtocolError("more PDVs after the response")
                    return decode_command(command)
