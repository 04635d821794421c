"""The association acceptor: the gateway's inbound side (C-ECHO and C-STORE SCP).

The server: one thread accepts connections; each connection gets its own thread, which reads PDUs from a
blocking socket, assembles the fragments of a DIMSE message, calls the C-STORE handler in the
same thread and writes the response. No polling, no queues, no state machine beyond what one
association of one operation at a time needs. Every wait on the peer is bounded:

- ``acse_timeout``: the TLS handshake and the A-ASSOCIATE-RQ after the connection is made;
- ``network_timeout``: an established association waiting for its next message (then A-ABORT);
- ``dimse_timeout``: waiting for the rest of a message that has started to arrive (then A-ABORT);
- sending is bounded by ``network_timeout``.

What the peer sends wrongly (an unknown PDU, lengths that do not add up, a data set on a
presentation context that was not accepted) is answered with A-ABORT and that connection
alone is closed.

Errors (all internal: they end one association, never the server or the sender)::

    UpperLayerError
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway import logs
from gateway.net.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_ECHO_RQ,
    C_STORE_RQ,
    CANNOT_UNDERSTAND,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    NO_DATA_SET,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    UNRECOGNIZED_OPERATION,
    Command,
    command_ui,
    command_us,
    decode_command,
    response_command,
)
from gateway.net.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    ABORT_SERVICE_PROVIDER,
    ABORT_SERVICE_USER,
    CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    CONTEXT_ACCEPTED,
    CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    MAX_ASSOCIATE_RQ_LENGTH,
    P_DATA_TF,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PDU,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_LOCAL_LIMIT,
    REJECT_REASONS,
    RELEASE_RP,
    VERIFICATION,
    VERIFICATION_TRANSFER_SYNTAXES,
    ContextResult,
    PeerAborted,
    PeerClosed,
    ProposedContext,
    ProtocolError,
    UpperLayerError,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    p_data_tf,
    parse_associate_rq,
)
from gateway.net.reader import PduReader

log = logs.get_logger("acceptor")


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE-RQ with its data set, as the handler sees it."""

    calling_ae: str
    address: str
    port: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytearray  # the data set as received; the handler's to keep


StoreHandler = Callable[[StoreRequest], int]


@dataclass(frozen=True)
class ServerConfig:
    ae_title: str
    host: str
    port: int
    max_pdu: int = 0  # what we announce we receive; 0: no limit
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    ssl_context: ssl.SSLContext | None = None
    # (calling AE title, peer address) -> allowed
    calling_ae_allowed: Callable[[str, str], bool] = field(default=lambda _ae, _address: True)
    # abstract syntaxes accepted for C-STORE (with the first transfer syntax proposed)
    storage_sop_class: Callable[[str], bool] = field(default=lambda _uid: True)


def negotiate(
    contexts: Sequence[ProposedContext], storage_sop_class: Callable[[str], bool]
) -> list[ContextResult]:
    """Verification with our preferred transfer syntax among those proposed; every storage SOP
    class with the first transfer syntax proposed; anything else rejected."""
    results = []
    for cx in contexts:
        first = cx.transfer_syntaxes[0] if cx.transfer_syntaxes else VERIFICATION_TRANSFER_SYNTAXES[0]
        if cx.abstract_syntax == VERIFICATION:
            chosen = next((ts for ts in VERIFICATION_TRANSFER_SYNTAXES
                           if ts in cx.transfer_syntaxes), None)
            result = CONTEXT_ACCEPTED if chosen else CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED
            results.append(ContextResult(cx.id, result, chosen or first, cx.abstract_syntax))
        elif not storage_sop_class(cx.abstract_syntax):
            results.append(ContextResult(cx.id, CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, first,
                                         cx.abstract_syntax))
        elif not cx.transfer_syntaxes:
            results.append(ContextResult(cx.id, CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED, first,
                                         cx.abstract_syntax))
        else:
            results.append(ContextResult(cx.id, CONTEXT_ACCEPTED, first, cx.abstract_syntax))
    return results


@dataclass
class _Message:
    """A DIMSE message being assembled: its command, then (maybe) its data set."""

    context_id: int
    command_bytes: bytearray = field(default_factory=bytearray)
    command: Command | None = None
    dataset: bytearray | None = None  # set once the command says a data set follows
    complete: bool = False


class _Association:
    """One connection, from the A-ASSOCIATE-RQ to its close, in its own thread."""

    def __init__(self, server: Server, sock: socket.socket, address: str, port: int) -> None:
        self.server = server
        self.sock = sock
        self.reader = PduReader(sock)
        self.address = address
        self.port = port
        self.peer = f"{address}:{port}"
        self.calling_ae = ""
        self.established = False
        self.busy = False  # a message has started arriving and is not answered yet
        self.contexts: dict[int, ContextResult] = {}
        self.peer_max_pdu = 0

    def _send(self, data: bytes) -> None:
        self.reader.set_timeout(self.server.config.network_timeout)
        self.sock.sendall(data)

    def _await_close(self) -> None:
        """After A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes the connection (PS3.8,
        state Sta13, bounded by the ARTIM timer, here ``acse_timeout``). Closing first races
        the peer's reading of the answer: some requestors then report an abort instead."""
        self.reader.set_timeout(self.server.config.acse_timeout)
        with contextlib.suppress(OSError, UpperLayerError):
            while True:
                self.reader.take(max(1, self.reader.buffered()))  # discarded, until closed

    def _abort(self, source: int, reason: int) -> None:
        with contextlib.suppress(OSError):
            self._send(encode_abort(source, reason))

    def run(self) -> None:
        config = self.server.config
        if config.ssl_context is not None and not self._tls(config.ssl_context):
            return
        try:
            if self._associate():
                self._serve()
        except PeerAborted:
            log.info("association aborted by the peer", calling_ae=self.calling_ae, peer=self.peer)
        except PeerClosed:
            if self.server.stopping and self.established:
                self._abort(ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
                log.info("association aborted: the gateway is stopping", calling_ae=self.calling_ae,
                         peer=self.peer)
            elif self.busy:
                log.warning("connection closed in the middle of a message",
                            calling_ae=self.calling_ae, peer=self.peer)
        except ProtocolError as exc:
            self._abort(ABORT_SERVICE_PROVIDER, exc.reason)
            log.warning("association aborted: protocol error", calling_ae=self.calling_ae,
                        peer=self.peer, error=str(exc))
        except TimeoutError:
            self._abort(ABORT_SERVICE_PROVIDER, REASON_NOT_SPECIFIED)
            if not self.established:
                log.warning("no association request within the ACSE timeout", peer=self.peer)
            else:
                log.warning("association aborted: " + ("DIMSE" if self.busy else "network")
                            + " timeout", calling_ae=self.calling_ae, peer=self.peer)
        except OSError as exc:
            log.warning("association ended by a network error", calling_ae=self.calling_ae,
                        peer=self.peer, error=type(exc).__name__)

    def _tls(self, context: ssl.SSLContext) -> bool:
        """The TLS handshake within ``acse_timeout``; whether it succeeded."""
        try:
            self.sock.settimeout(self.server.config.acse_timeout)
            wrapped = context.wrap_socket(self.sock, server_side=True,
                                          do_handshake_on_connect=False)
            self.sock = self.reader.sock = wrapped
            if not self.server._replace_socket(self, wrapped):
                return False
            wrapped.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            if not self.server.stopping:
                log.warning("TLS handshake failed", peer=self.peer, error=type(exc).__name__)
            return False
        return True

    def _associate(self) -> bool:
        config = self.server.config
        reader = self.reader
        reader.deadline = time.monotonic() + config.acse_timeout
        kind, length = self.reader.pdu_header()
        if kind != A_ASSOCIATE_RQ:
            raise ProtocolError("expected A-ASSOCIATE-RQ", REASON_UNEXPECTED_PDU)
        if length > MAX_ASSOCIATE_RQ_LENGTH:
            raise ProtocolError("A-ASSOCIATE-RQ too long")
        rq = parse_associate_rq(reader.read(length))
        reader.deadline = None
        self.calling_ae = rq.calling_ae
        rejection: tuple[int, int, int] | None = None
        if not config.calling_ae_allowed(rq.calling_ae, self.address):
            rejection = REJECT_CALLING_AE
        if rq.called_ae != config.ae_title.strip():
            rejection = REJECT_CALLED_AE
        if rejection is None and not self.server._establish(self):
            rejection = REJECT_LOCAL_LIMIT
        if rejection is not None:
            with contextlib.suppress(OSError):
                self._send(encode_associate_rj(*rejection))
                self._await_close()
            log.warning("association rejected", calling_ae=rq.calling_ae, peer=self.peer,
                        reason=REJECT_REASONS[rejection])
            return False
        results = negotiate(rq.contexts, config.storage_sop_class)
        self.contexts = {r.id: r for r in results if r.result == CONTEXT_ACCEPTED}
        self.peer_max_pdu = rq.max_pdu
        self._send(encode_associate_ac(rq, config.ae_title, results, config.max_pdu,
                                       config.implementation_class_uid,
                                       config.implementation_version_name))
        log.info("association", calling_ae=rq.calling_ae, peer=self.peer)
        return True

    def _serve(self) -> None:
        config = self.server.config
        message: _Message | None = None
        while True:
            self.reader.set_timeout(config.dimse_timeout if message else config.network_timeout)
            kind, length = self.reader.pdu_header()
            if kind == P_DATA_TF:
                message = self._p_data(length, message)
            elif kind == A_RELEASE_RQ:
                self.reader.read(length)
                self._send(RELEASE_RP)
                self._await_close()
                return
            elif kind == A_ABORT:
                raise PeerAborted("A-ABORT")
            else:
                raise ProtocolError(f"unexpected PDU type 0x{kind:02X}", REASON_UNEXPECTED_PDU)

    def _p_data(self, length: int, message: _Message | None) -> _Message | None:
        """Read one P-DATA-TF PDU; answer each message it completes."""
        reader = self.reader
        while length:
            value_length, context_id, header = reader.pdv_header(length, self.contexts)
            length -= value_length + 6
            if message is None:
                if not self.server._begin_message(self):
                    raise PeerClosed("the gateway is stopping")
                message = _Message(context_id)
            elif context_id != message.context_id:
                raise ProtocolError("a message's fragments on different presentation contexts")
            last = bool(header & 0x02)
            if header & 0x01:
                if message.command is not None:
                    raise ProtocolError("command fragment after the command set was complete")
                reader.append_to(message.command_bytes, value_length)
                if last:
                    self._command_complete(message)
            else:
                if message.dataset is None or message.complete:
                    raise ProtocolError("data set fragment where none was expected")
                reader.append_to(message.dataset, value_length)
                message.complete = last
            if message.complete:
                self._answer(message)
                message = None
                if not self.server._end_message(self):
                    raise PeerClosed("the gateway is stopping")
        return message

    def _command_complete(self, message: _Message) -> None:
        message.command = command = decode_command(message.command_bytes)
        if command_us(command, COMMAND_FIELD) is None:
            raise ProtocolError("command set without a command field")
        if command_us(command, COMMAND_DATA_SET_TYPE) == NO_DATA_SET:
            message.complete = True
        else:
            message.dataset = bytearray()

    def _answer(self, message: _Message) -> None:
        assert message.command is not None
        command = message.command
        context = self.contexts[message.context_id]
        kind = command_us(command, COMMAND_FIELD)
        if kind == C_ECHO_RQ:
            status = SUCCESS
        elif kind == C_STORE_RQ and message.dataset is not None:
            status = self._store(command, context, message.dataset)
        elif kind == C_STORE_RQ:
            status = CANNOT_UNDERSTAND  # a C-STORE without a data set
        else:
            status = UNRECOGNIZED_OPERATION
        response = response_command(command, status)
        if response is not None:
            self._send(p_data_tf(message.context_id, response, self.peer_max_pdu))

    def _store(self, command: Command, context: ContextResult, dataset: bytearray) -> int:
        sop_class = command_ui(command, AFFECTED_SOP_CLASS_UID)
        sop_instance = command_ui(command, AFFECTED_SOP_INSTANCE_UID)
        if context.abstract_syntax == VERIFICATION:
            return SOP_CLASS_NOT_SUPPORTED
        if not sop_class or not sop_instance:
            return CANNOT_UNDERSTAND
        request = StoreRequest(self.calling_ae, self.address, self.port, sop_class, sop_instance,
                               context.transfer_syntax, dataset)
        try:
            return self.server.on_store(request)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not end the association
            log.error("store handler failed", calling_ae=self.calling_ae, peer=self.peer,
                      error=type(exc).__name__)
            return PROCESSING_FAILURE


class Server:
    """Accepts associations on ``config.host:config.port`` until ``stop``."""

    def __init__(self, config: ServerConfig, on_store: StoreHandler) -> None:
        self.config = config
        self.on_store = on_store
        self.stopping = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._associations: set[_Association] = set()
        self._established = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "not started"
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> Server:
        """Listen (an OSError if the address is taken) and accept in a background thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.config.host, self.config.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,),
                                        name="acceptor", daemon=True)
        self._thread.start()
        return self

    def active_associations(self) -> int:
        with self._lock:
            return self._established

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, (address, port, *_) = listener.accept()
            except OSError:
                if self.stopping:
                    return
                time.sleep(0.05)  # out of file descriptors, for example: try again shortly
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = _Association(self, sock, str(address), int(port))
            with self._lock:
                if self.stopping:
                    sock.close()
                    return
                self._associations.add(assoc)
            threading.Thread(target=self._run, args=(assoc,), name=f"association-{assoc.peer}",
                             daemon=True).start()

    def _run(self, assoc: _Association) -> None:
        try:
            assoc.run()
        except Exception as exc:  # noqa: BLE001 - a bug here must end this association only
            log.error("association failed", calling_ae=assoc.calling_ae, peer=assoc.peer,
                      error=type(exc).__name__)
        finally:
            with contextlib.suppress(OSError):
                assoc.sock.close()
            with self._lock:
                self._associations.discard(assoc)
                if assoc.established:
                    self._established -= 1
                self._changed.notify_all()

    # --- called by associations, under the lock ---

    def _establish(self, assoc: _Association) -> bool:
        with self._lock:
            if self.stopping or self._established >= self.config.max_associations:
                return False
            self._established += 1
            assoc.established = True
            return True

    def _replace_socket(self, assoc: _Association, sock: socket.socket) -> bool:
        with self._lock:
            assoc.sock = sock
            return not self.stopping

    def _begin_message(self, assoc: _Association) -> bool:
        with self._lock:
            assoc.busy = not self.stopping
            return assoc.busy

    def _end_message(self, assoc: _Association) -> bool:
        with self._lock:
            assoc.busy = False
            return not self.stopping

    # --- stopping ---

    def stop(self, timeout: float) -> None:
        """Accept no more; let messages that have started be answered (within ``timeout``);
        abort every association then."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.stopping = True
            listener, self._listener = self._listener, None
            idle = [a for a in self._associations if not a.busy]
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            listener.close()
        for assoc in idle:
            _wake(assoc.sock)
        with self._lock:
            while self._associations and time.monotonic() < deadline:
                self._changed.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            left = list(self._associations)
        for assoc in left:
            _wake(assoc.sock, socket.SHUT_RDWR)
        with self._lock:  # briefly: their sockets are shut, so they end at once
            self._changed.wait_for(lambda: not self._associations, timeout=1.0)
        if self._thread is not None:
            self._thread.join(timeout=1.0)


def _wake(sock: socket.socket, how: int = socket.SHUT_RD) -> None:
    """Make a thread blocked reading ``sock`` see the end of the stream. On a TLS socket the
    plain socket's shutdown is used (not ``SSLSocket.shutdown``), so the association can still
    send its A-ABORT through TLS."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, how)
