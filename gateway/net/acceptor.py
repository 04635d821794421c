"""The association acceptor: the gateway's inbound side (C-ECHO and C-STORE SCP).

The server: one thread accepts connections; each connection gets its own thread, which reads PDUs from a
blocking socket, assembles the fragments of a DIMSE message, calls the C-STORE handler in the
same thread and writes the response. No polling, no queues, no state machine beyond what one
association of one operation at a time needs. Every wait on the peer is bounded, and so is
what a peer can make the process hold:

- ``artim_timeout`` (the ARTIM timer, PS3.8 9.1.5): the TLS handshake and the whole
  A-ASSOCIATE-RQ, together, from the connection on; and the wait for the peer to close after
  A-ASSOCIATE-RJ or A-RELEASE-RP;
- ``max_pending_connections``: connections not associated yet; one more closes the oldest (a
  real requestor sends its A-ASSOCIATE-RQ at once, so an idle flood cannot lock senders out);
- ``network_timeout``: an established association waiting for the first byte of its next
  message (then A-ABORT); also each send;
- ``dimse_timeout``: a deadline per message, from its first byte to its last, later by one
  second per ``min_receive_rate_kib`` KiB received (a large instance at a fair rate is fine,
  a trickle is cut; then A-ABORT);
- ``max_instance_mb``: the data set of one message; beyond it the rest is read and dropped and
  the answer is 0xA700;
- ``receive_memory_mb``: data-set bytes held by all associations together, from the first
  data fragment until the handler returns; a message that would go over it is dropped the
  same way (0xA700), one that fits never waits;
- threads: at most ``max_associations + max_pending_connections`` plus a few.

What the peer sends wrongly (an unknown PDU, lengths that do not add up, a P-DATA-TF longer
than we announced, a data set on a presentation context that was not accepted) is answered
with A-ABORT and that connection alone is closed. An A-ASSOCIATE-RQ for another protocol
version or application context is rejected (PS3.8 9.3.4); a C-STORE whose SOP class is not
its presentation context's abstract syntax gets 0x0122 (PS3.7 9.1.1) and its data set is not
kept.

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
from typing import Any

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
    OUT_OF_RESOURCES,
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
    APPLICATION_CONTEXT,
    CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    CONTEXT_ACCEPTED,
    CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    MAX_ASSOCIATE_RQ_LENGTH,
    P_DATA_TF,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PDU,
    REJECT_APPLICATION_CONTEXT,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_LOCAL_LIMIT,
    REJECT_PROTOCOL_VERSION,
    REJECT_REASONS,
    RELEASE_ABORT_LENGTH,
    RELEASE_RP,
    VERIFICATION,
    VERIFICATION_TRANSFER_SYNTAXES,
    AssociateRequest,
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
from gateway.net.reader import SMALL_BUFFER, PduReader

log = logs.get_logger("acceptor")

MIB = 1024 * 1024
MAX_COMMAND_SET = 64 * 1024  # a C-STORE-RQ is a few hundred bytes; beyond this it is not one
ABORT_SEND_TIMEOUT = 1.0  # an A-ABORT is 10 bytes: a peer that does not take them is gone
SPARE_THREADS = 4  # connections closed but whose threads have not ended yet
# A burst of connections waits in the kernel's queue (no thread, no buffer) for the accept loop;
# a short queue drops SYNs instead, and a real sender behind a flood then waits 1 s per retry.
LISTEN_BACKLOG = 1024
EVICTION_LOG_INTERVAL = 1.0  # seconds: at most one log line per interval about closed pending ones


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


def _any_uid(_uid: str) -> bool:
    return True


@dataclass(frozen=True)
class ServerConfig:
    ae_title: str
    host: str
    port: int
    max_pdu: int = 0  # what we announce we receive; 0: no limit
    max_associations: int = 10
    artim_timeout: float = 10.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    max_pending_connections: int = 32
    min_receive_rate_kib: int = 64  # KiB/s that extend dimse_timeout by 1 s each; 0: no extension
    max_instance_mb: int = 2048
    receive_memory_mb: int = 4096
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    ssl_context: ssl.SSLContext | None = None
    # (calling AE title, peer address) -> allowed
    # (calling AE title, peer address, TLS client certificate subject as getpeercert()'s
    # (attribute, value) pairs; empty without one) -> allowed
    calling_ae_allowed: Callable[[str, str, tuple[tuple[str, str], ...]], bool] = field(
        default=lambda _ae, _address, _subject: True)
    # abstract syntaxes accepted for C-STORE
    storage_sop_class: Callable[[str], bool] = field(default=_any_uid)
    # transfer syntaxes a storage context may be accepted with (the first proposed that is)
    transfer_syntax_supported: Callable[[str], bool] = field(default=_any_uid)


def negotiate(
    contexts: Sequence[ProposedContext],
    storage_sop_class: Callable[[str], bool],
    transfer_syntax_supported: Callable[[str], bool] = _any_uid,
) -> list[ContextResult]:
    """Verification with our preferred transfer syntax among those proposed; every storage SOP
    class with the first transfer syntax proposed that we support (none: result 4); anything
    else rejected."""
    results = []
    for cx in contexts:
        first = cx.transfer_syntaxes[0] if cx.transfer_syntaxes else VERIFICATION_TRANSFER_SYNTAXES[0]
        if cx.abstract_syntax == VERIFICATION:
            chosen = next((ts for ts in VERIFICATION_TRANSFER_SYNTAXES
                           if ts in cx.transfer_syntaxes), None)
        elif not storage_sop_class(cx.abstract_syntax):
            results.append(ContextResult(cx.id, CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, first,
                                         cx.abstract_syntax))
            continue
        else:
            chosen = next((ts for ts in cx.transfer_syntaxes if transfer_syntax_supported(ts)), None)
        result = CONTEXT_ACCEPTED if chosen else CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED
        results.append(ContextResult(cx.id, result, chosen or first, cx.abstract_syntax))
    return results


@dataclass(frozen=True)
class Refusal:
    """Why a C-STORE's data set is not kept: the status to answer, and its Error Comment."""

    status: int
    comment: str = ""


BUSY = Refusal(OUT_OF_RESOURCES, "gateway busy: receive_memory_mb in use")
SOP_CLASS_MISMATCH = Refusal(SOP_CLASS_NOT_SUPPORTED, "SOP class differs from the presentation context's")
NO_SOP_UIDS = Refusal(CANNOT_UNDERSTAND, "no Affected SOP Class or Instance UID")


def too_large(max_instance_mb: int) -> Refusal:
    return Refusal(OUT_OF_RESOURCES, f"instance larger than max_instance_mb ({max_instance_mb} MB)")


@dataclass
class _Message:
    """A DIMSE message being assembled: its command, then (maybe) its data set."""

    context_id: int
    command_bytes: bytearray = field(default_factory=bytearray)
    command: Command | None = None
    dataset: bytearray | None = None  # set once the command says a data set follows
    refusal: Refusal | None = None  # once set, the rest of the data set is read and dropped
    complete: bool = False


class MemoryBudget:
    """Data-set bytes held by all associations together, against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def release(self, n: int) -> None:
        if n:
            with self._lock:
                self.held -= n


class _Association:
    """One connection, from the A-ASSOCIATE-RQ to its close, in its own thread."""

    def __init__(self, server: Server, sock: socket.socket, address: str, port: int) -> None:
        self.server = server
        self.sock = sock
        self.reader = PduReader(sock, SMALL_BUFFER)  # grows once associated
        self.address = address
        self.port = port
        self.peer = f"{address}:{port}"
        self.calling_ae = ""
        self.established = False
        self.evicted = False  # closed by the server to make room for a newer pending connection
        self.busy = False  # a message has started arriving and is not answered yet
        self.held = 0  # data-set bytes reserved from the server's memory budget
        self.contexts: dict[int, ContextResult] = {}
        self.peer_max_pdu = 0

    def _send(self, data: bytes) -> None:
        self.reader.set_timeout(self.server.config.network_timeout)
        self.sock.sendall(data)

    def _await_close(self) -> None:
        """After A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes the connection (PS3.8,
        state Sta13, bounded by the ARTIM timer). Closing first races the peer's reading of
        the answer: some requestors then report an abort instead."""
        self.reader.start_deadline(self.server.config.artim_timeout)
        with contextlib.suppress(OSError, UpperLayerError):
            while True:
                self.reader.skip(max(1, self.reader.buffered()))  # discarded, until closed

    def _abort(self, source: int, reason: int) -> None:
        with contextlib.suppress(OSError):
            self.reader.set_timeout(ABORT_SEND_TIMEOUT)
            self.sock.sendall(encode_abort(source, reason))

    def run(self) -> None:
        config = self.server.config
        try:
            # ARTIM: the handshake and the whole A-ASSOCIATE-RQ, however slowly they trickle in
            self.reader.start_deadline(config.artim_timeout)
            if config.ssl_context is not None and not self._tls(config.ssl_context):
                return
            if self._associate():
                self._serve()
        except PeerAborted:
            log.info("association aborted by the peer", calling_ae=self.calling_ae, peer=self.peer)
        except PeerClosed:
            self._closed()
        except ProtocolError as exc:
            self._abort(ABORT_SERVICE_PROVIDER, exc.reason)
            log.warning("association aborted: protocol error", calling_ae=self.calling_ae,
                        peer=self.peer, error=str(exc))
        except TimeoutError:
            self._timed_out()
        except OSError as exc:
            if not self.evicted:
                log.warning("association ended by a network error", calling_ae=self.calling_ae,
                            peer=self.peer, error=type(exc).__name__)
        finally:
            self._release_memory()

    def _closed(self) -> None:
        if self.server.stopping and self.established:
            self._abort(ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
            log.info("association aborted: the gateway is stopping", calling_ae=self.calling_ae,
                     peer=self.peer)
        elif self.busy:
            log.warning("connection closed in the middle of a message",
                        calling_ae=self.calling_ae, peer=self.peer)

    def _timed_out(self) -> None:
        self._abort(ABORT_SERVICE_PROVIDER, REASON_NOT_SPECIFIED)
        if not self.established:
            log.warning("no association request within artim_timeout", peer=self.peer)
        elif self.reader.deadline is not None:
            log.warning("association aborted: a message not received within dimse_timeout",
                        calling_ae=self.calling_ae, peer=self.peer)
        else:
            log.warning("association aborted: network timeout", calling_ae=self.calling_ae,
                        peer=self.peer)

    def _peer_subject(self) -> tuple[tuple[str, str], ...]:
        """The verified client certificate's subject attributes; empty without TLS or one."""
        if not isinstance(self.sock, ssl.SSLSocket):
            return ()
        subject: Any = (self.sock.getpeercert() or {}).get("subject", ())  # RDNs of pairs
        return tuple((str(name), str(value)) for rdn in subject for name, value in rdn)

    def _tls(self, context: ssl.SSLContext) -> bool:
        """The TLS handshake, within what is left of the ARTIM deadline; whether it succeeded."""
        try:
            wrapped = context.wrap_socket(self.sock, server_side=True,
                                          do_handshake_on_connect=False)
            self.sock = self.reader.sock = wrapped
            if not self.server._replace_socket(self, wrapped):
                return False
            deadline = self.reader.deadline
            assert deadline is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("ARTIM deadline passed")
            # CPython counts a handshake's timeout from its start, not per read: a deadline
            wrapped.settimeout(remaining)
            wrapped.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            if not self.server.stopping and not self.evicted:
                log.warning("TLS handshake failed", peer=self.peer, error=type(exc).__name__)
            return False
        return True

    def _associate(self) -> bool:
        config = self.server.config
        reader = self.reader
        kind, length = reader.pdu_header()
        if kind != A_ASSOCIATE_RQ:
            raise ProtocolError("expected A-ASSOCIATE-RQ", REASON_UNEXPECTED_PDU)
        if length > MAX_ASSOCIATE_RQ_LENGTH:
            raise ProtocolError("A-ASSOCIATE-RQ too long")
        rq = parse_associate_rq(reader.read(length))
        reader.deadline = None
        self.calling_ae = rq.calling_ae
        rejection = self._rejection(rq)
        if rejection is None and not self.server._establish(self):
            rejection = REJECT_LOCAL_LIMIT
        if rejection is not None:
            if not self.evicted:
                log.warning("association rejected", calling_ae=rq.calling_ae, peer=self.peer,
                            reason=REJECT_REASONS[rejection])
            with contextlib.suppress(OSError):
                self._send(encode_associate_rj(*rejection))
                self._await_close()
            return False
        reader.grow()
        results = negotiate(rq.contexts, config.storage_sop_class, config.transfer_syntax_supported)
        self.contexts = {r.id: r for r in results if r.result == CONTEXT_ACCEPTED}
        self.peer_max_pdu = rq.max_pdu
        self._send(encode_associate_ac(rq, config.ae_title, results, config.max_pdu,
                                       config.implementation_class_uid,
                                       config.implementation_version_name))
        log.info("association", calling_ae=rq.calling_ae, peer=self.peer)
        return True

    def _rejection(self, rq: AssociateRequest) -> tuple[int, int, int] | None:
        """What PS3.8 9.3.4 and our policy reject, the upper layer's reasons first."""
        config = self.server.config
        if not rq.supports_version_1:
            return REJECT_PROTOCOL_VERSION
        if rq.application_context != APPLICATION_CONTEXT:
            return REJECT_APPLICATION_CONTEXT
        if rq.called_ae != config.ae_title.strip():
            return REJECT_CALLED_AE
        if not config.calling_ae_allowed(rq.calling_ae, self.address, self._peer_subject()):
            return REJECT_CALLING_AE
        return None

    def _serve(self) -> None:
        config = self.server.config
        reader = self.reader
        message: _Message | None = None
        while True:
            if message is None:
                reader.wait_for_data(config.network_timeout)
                self._start_message_deadline()  # a PDU header trickled in is cut too
            kind, length = reader.pdu_header()
            if kind == P_DATA_TF:
                if config.max_pdu and length > config.max_pdu:
                    raise ProtocolError("P-DATA-TF longer than the maximum length we announced")
                message = self._p_data(length, message)
            elif kind == A_RELEASE_RQ:
                self._check_fixed_length(length, "A-RELEASE-RQ")
                reader.skip(length)
                self._send(RELEASE_RP)
                self._await_close()
                return
            elif kind == A_ABORT:
                self._check_fixed_length(length, "A-ABORT")
                raise PeerAborted("A-ABORT")
            else:
                raise ProtocolError(f"unexpected PDU type 0x{kind:02X}", REASON_UNEXPECTED_PDU)

    @staticmethod
    def _check_fixed_length(length: int, what: str) -> None:
        if length != RELEASE_ABORT_LENGTH:
            raise ProtocolError(f"{what} with a length other than {RELEASE_ABORT_LENGTH}")

    def _start_message_deadline(self) -> None:
        config = self.server.config
        self.reader.start_deadline(config.dimse_timeout, config.min_receive_rate_kib * 1024)

    def _p_data(self, length: int, message: _Message | None) -> _Message | None:
        """Read one P-DATA-TF PDU; answer each message it completes."""
        reader = self.reader
        while length:
            value_length, context_id, header = reader.pdv_header(length, self.contexts)
            length -= value_length + 6
            if message is None:
                if not self.server._begin_message(self):
                    raise PeerClosed("the gateway is stopping")
                if reader.deadline is None:  # a second message in the PDU that ended the first
                    self._start_message_deadline()
                message = _Message(context_id)
            elif context_id != message.context_id:
                raise ProtocolError("a message's fragments on different presentation contexts")
            last = bool(header & 0x02)
            if header & 0x01:
                self._command_fragment(message, value_length, last)
            else:
                if message.dataset is None or message.complete:
                    raise ProtocolError("data set fragment where none was expected")
                self._data_fragment(message, value_length)
                message.complete = last
            if message.complete:
                reader.deadline = None  # received: the handler's time is not the sender's
                self._answer(message)
                message = None
                if not self.server._end_message(self):
                    raise PeerClosed("the gateway is stopping")
        return message

    def _command_fragment(self, message: _Message, length: int, last: bool) -> None:
        if message.command is not None:
            raise ProtocolError("command fragment after the command set was complete")
        if len(message.command_bytes) + length > MAX_COMMAND_SET:
            raise ProtocolError("command set longer than any DIMSE command")
        self.reader.append_to(message.command_bytes, length)
        if last:
            self._command_complete(message)

    def _command_complete(self, message: _Message) -> None:
        message.command = command = decode_command(message.command_bytes)
        if command_us(command, COMMAND_FIELD) is None:
            raise ProtocolError("command set without a command field")
        if command_us(command, COMMAND_DATA_SET_TYPE) == NO_DATA_SET:
            message.complete = True
            return
        message.dataset = bytearray()
        if command_us(command, COMMAND_FIELD) == C_STORE_RQ:
            message.refusal = self._store_refusal(command, self.contexts[message.context_id])

    def _store_refusal(self, command: Command, context: ContextResult) -> Refusal | None:
        """Known from the command alone: a C-STORE whose data set is not worth keeping."""
        sop_class = command_ui(command, AFFECTED_SOP_CLASS_UID)
        if not sop_class or not command_ui(command, AFFECTED_SOP_INSTANCE_UID):
            return NO_SOP_UIDS
        if context.abstract_syntax == VERIFICATION or sop_class != context.abstract_syntax:
            # PS3.7 9.1.1: the SOP class is the presentation context's abstract syntax
            self._log_refusal(SOP_CLASS_MISMATCH, "SOP class is not its presentation context's")
            return SOP_CLASS_MISMATCH
        return None

    def _data_fragment(self, message: _Message, length: int) -> None:
        """Keep the fragment, or read and drop it when the message is refused (or now must be)."""
        assert message.dataset is not None
        if message.refusal is None:
            message.refusal = self._hold(len(message.dataset), length)
            if message.refusal is not None:
                message.dataset = bytearray()
                self._release_memory()
        if message.refusal is None:
            self.reader.append_to(message.dataset, length)
        else:
            self.reader.skip(length)

    def _hold(self, have: int, more: int) -> Refusal | None:
        """Reserve ``more`` data-set bytes, or why not (the message is then dropped)."""
        config = self.server.config
        if have + more > config.max_instance_mb * MIB:
            refusal = too_large(config.max_instance_mb)
            self._log_refusal(refusal, "instance larger than max_instance_mb")
            return refusal
        if not self.server.memory.reserve(more):
            self._log_refusal(BUSY, "receive_memory_mb in use by other instances")
            return BUSY
        self.held += more
        return None

    def _log_refusal(self, refusal: Refusal, reason: str) -> None:
        log.warning("C-STORE refused", reason=reason, status=f"0x{refusal.status:04X}",
                    calling_ae=self.calling_ae, peer=self.peer)

    def _release_memory(self) -> None:
        self.server.memory.release(self.held)
        self.held = 0

    def _answer(self, message: _Message) -> None:
        assert message.command is not None
        command = message.command
        kind = command_us(command, COMMAND_FIELD)
        comment = ""
        try:
            if kind == C_ECHO_RQ:
                status = SUCCESS
            elif kind == C_STORE_RQ and message.refusal is not None:
                status, comment = message.refusal.status, message.refusal.comment
            elif kind == C_STORE_RQ and message.dataset is not None:
                status = self._store(command, self.contexts[message.context_id], message.dataset)
            elif kind == C_STORE_RQ:
                status = CANNOT_UNDERSTAND  # a C-STORE without a data set
            else:
                status = UNRECOGNIZED_OPERATION
        finally:
            self._release_memory()
        response = response_command(command, status, comment)
        if response is not None:
            self._send(p_data_tf(message.context_id, response, self.peer_max_pdu))

    def _store(self, command: Command, context: ContextResult, dataset: bytearray) -> int:
        request = StoreRequest(self.calling_ae, self.address, self.port,
                               command_ui(command, AFFECTED_SOP_CLASS_UID) or "",
                               command_ui(command, AFFECTED_SOP_INSTANCE_UID) or "",
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
        self.memory = MemoryBudget(config.receive_memory_mb * MIB)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._associations: set[_Association] = set()  # every connection with a thread
        self._pending: dict[_Association, None] = {}  # not associated yet, oldest first
        self._established = 0
        self._evicted_unlogged = 0
        self._eviction_logged_at = float("-inf")
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "not started"
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def max_threads(self) -> int:
        """Connection threads at most (the acceptor's own thread not counted)."""
        return self.config.max_associations + self.config.max_pending_connections + SPARE_THREADS

    def start(self) -> Server:
        """Listen (an OSError if the address is taken) and accept in a background thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.config.host, self.config.port))
            listener.listen(LISTEN_BACKLOG)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,),
                                        name="acceptor", daemon=True)
        self._thread.start()
        return self

    def listening(self) -> bool:
        """Whether new connections are accepted (started, not stopping, the accept loop alive)."""
        with self._lock:
            listening = self._listener is not None and not self.stopping
        return listening and self._thread is not None and self._thread.is_alive()

    def active_associations(self) -> int:
        with self._lock:
            return self._established

    def pending_connections(self) -> int:
        with self._lock:
            return len(self._pending)

    def connection_threads(self) -> int:
        with self._lock:
            return len(self._associations)

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
                self._make_room()
                self._associations.add(assoc)
                self._pending[assoc] = None
            self._log_evictions()
            threading.Thread(target=self._run, args=(assoc,), name=f"association-{assoc.peer}",
                             daemon=True).start()

    def _make_room(self) -> None:
        """Under the lock: close the oldest pending connection when they are at the cap, then
        wait (briefly: closed connections end at once) until a thread is free."""
        if len(self._pending) >= self.config.max_pending_connections:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.evicted = True
            _wake(oldest.sock, socket.SHUT_RDWR)
            self._evicted_unlogged += 1
        self._changed.wait_for(lambda: len(self._associations) < self.max_threads or self.stopping,
                               timeout=self.config.artim_timeout)

    def _log_evictions(self) -> None:
        """A flood closes many connections a second: one line a second says so."""
        with self._lock:
            now = time.monotonic()
            if not self._evicted_unlogged or now - self._eviction_logged_at < EVICTION_LOG_INTERVAL:
                return
            closed, self._evicted_unlogged = self._evicted_unlogged, 0
            self._eviction_logged_at = now
        log.warning("pending connections at max_pending_connections: the oldest closed",
                    count=closed)

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
                self._pending.pop(assoc, None)
                if assoc.established:
                    self._established -= 1
                self._changed.notify_all()

    # --- called by associations, under the lock ---

    def _establish(self, assoc: _Association) -> bool:
        with self._lock:
            if (self.stopping or assoc.evicted
                    or self._established >= self.config.max_associations):
                return False
            self._pending.pop(assoc, None)
            self._established += 1
            assoc.established = True
            return True

    def _replace_socket(self, assoc: _Association, sock: socket.socket) -> bool:
        with self._lock:
            assoc.sock = sock
            return not self.stopping and not assoc.evicted

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
            self._changed.notify_all()
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
