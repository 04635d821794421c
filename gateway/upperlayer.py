"""The DICOM Upper Layer (PS3.8) and the little of DIMSE (PS3.7) the gateway needs: the PDU and
command set codec (both directions), a bounded PDU reader, and the server (inbound).

The requestor side (our outbound associations) is ``gateway/scu.py``; it uses the codec and the
reader from here.

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
    ├── PeerClosed          the connection was closed or broke (or the server is stopping)
    ├── PeerAborted         the peer sent A-ABORT
    ├── ProtocolError       a malformed or unexpected PDU or DIMSE message; carries the A-ABORT reason
    ├── ConnectionFailed    requestor: no connection (refused, unreachable, TLS handshake failed)
    ├── PeerTimeout         requestor: the peer did not answer within a timeout
    └── AssociationRejected requestor: the peer sent A-ASSOCIATE-RJ (its result, source, reason)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field

from gateway import logs
from gateway.errors import GatewayError

log = logs.get_logger("upperlayer")

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
# What Verification is accepted with, in our order of preference (pynetdicom's defaults).
VERIFICATION_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)

# PDU types (PS3.8 9.3)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = frozenset({A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ,
                       A_RELEASE_RP, A_ABORT})
MAX_ASSOCIATE_RQ_LENGTH = 1 << 20  # far beyond 128 contexts with a dozen transfer syntaxes each

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE title not recognized
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider (presentation), local limit
REJECT_REASONS = {
    REJECT_CALLING_AE: "calling AE title not recognized",
    REJECT_CALLED_AE: "called AE title not recognized",
    REJECT_LOCAL_LIMIT: "local limit exceeded",
}
REJECT_SOURCES = {0x01: "service-user", 0x02: "service-provider (ACSE)",
                  0x03: "service-provider (presentation)"}
REJECT_REASON_TEXT = {  # (source, reason)
    (0x01, 0x01): "no reason given", (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognized", (0x01, 0x07): "called AE title not recognized",
    (0x02, 0x01): "no reason given", (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion", (0x03, 0x02): "local limit exceeded",
}

# A-ABORT source and reason, PS3.8 9.3.8
ABORT_SERVICE_USER, ABORT_SERVICE_PROVIDER = 0x00, 0x02
REASON_NOT_SPECIFIED, REASON_UNRECOGNIZED_PDU, REASON_UNEXPECTED_PDU = 0x00, 0x01, 0x02
REASON_INVALID_PARAMETER = 0x06

# Presentation context results, PS3.8 9.3.3.2
CONTEXT_ACCEPTED = 0x00
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

# DIMSE (PS3.7): command fields, the "no data set" marker, statuses
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ, RESPONSE_BIT = 0x0001, 0x0030, 0x0FFF, 0x8000
NO_DATA_SET, DATA_SET_FOLLOWS = 0x0101, 0x0000  # CommandDataSetType: any value but 0x0101 says one follows
PRIORITY_MEDIUM = 0x0000
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC211  # the store handler raised (pynetdicom answers the same)

# Command set elements (group 0000)
AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID = 0x0002, 0x0003
COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED_TO = 0x0100, 0x0110, 0x0120
PRIORITY, COMMAND_DATA_SET_TYPE, STATUS = 0x0700, 0x0800, 0x0900
AFFECTED_SOP_INSTANCE_UID, REQUESTED_SOP_INSTANCE_UID = 0x1000, 0x1001

_PDU_HEADER = struct.Struct(">BxI")
_ITEM_HEADER = struct.Struct(">BxH")
PDV_HEADER = struct.Struct(">IBB")
_COMMAND_ELEMENT = struct.Struct("<HHI")
READ_BUFFER = 256 * 1024


class UpperLayerError(GatewayError):
    """Ends one association."""


class PeerClosed(UpperLayerError):
    """The connection was closed (by the peer, or by the server that is stopping)."""


class PeerAborted(UpperLayerError):
    """The peer sent A-ABORT."""


class ProtocolError(UpperLayerError):
    """A malformed or unexpected PDU or DIMSE message: answered with A-ABORT."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionFailed(UpperLayerError):
    """No connection to the peer: refused, unreachable, or the TLS handshake failed."""


class PeerTimeout(UpperLayerError):
    """The peer did not answer (or stopped reading) within a timeout."""


class AssociationRejected(UpperLayerError):
    """The peer sent A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        super().__init__(self.describe())

    @property
    def permanent(self) -> bool:
        return self.result == 0x01

    def describe(self) -> str:
        """Result, source and reason in words (PS3.8 9.3.4), for logs."""
        kind = "permanent" if self.permanent else "transient"
        source = REJECT_SOURCES.get(self.source, f"source {self.source}")
        reason = REJECT_REASON_TEXT.get((self.source, self.reason), f"reason {self.reason}")
        return f"{kind}, {source}: {reason}"


# --- PDUs: bytes <-> values, no I/O ---------------------------------------------------------------


@dataclass(frozen=True)
class ProposedContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    called_ae: str
    calling_ae: str
    called_ae_field: bytes  # the 16 bytes as sent, echoed in A-ASSOCIATE-AC
    calling_ae_field: bytes
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu: int = 0  # the most the peer receives in one P-DATA-TF (variable field); 0: no limit
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


@dataclass(frozen=True)
class ContextResult:
    id: int
    result: int
    transfer_syntax: str
    abstract_syntax: str = ""


def _text(value: bytes | memoryview) -> str:
    """A UID or AE title as sent: ASCII, padding (NUL or space) not significant."""
    return bytes(value).decode("ascii", "replace").strip(" \x00")


def _items(body: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """(type, value) of the items (or sub-items) in ``body[start:end]``."""
    items = []
    while start < end:
        if start + 4 > end:
            raise ProtocolError("item header runs past its PDU")
        kind, length = _ITEM_HEADER.unpack_from(body, start)
        start += 4
        if start + length > end:
            raise ProtocolError("item runs past its PDU")
        items.append((kind, body[start : start + length]))
        start += length
    return items


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """The variable part of an A-ASSOCIATE-RQ PDU (after the 6-byte PDU header)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    application_context = ""
    contexts: list[ProposedContext] = []
    max_pdu, class_uid, version_name = 0, "", ""
    for kind, value in _items(body, 68, len(body)):
        if kind == 0x10:
            application_context = _text(value)
        elif kind == 0x20:
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            abstract, transfer = "", []
            for sub, sub_value in _items(value, 4, len(value)):
                if sub == 0x30:
                    abstract = _text(sub_value)
                elif sub == 0x40:
                    transfer.append(_text(sub_value))
            contexts.append(ProposedContext(value[0], abstract, tuple(transfer)))
        elif kind == 0x50:
            # role selection, extended negotiation, user identity, asynchronous operations
            # window: not answered (one operation at a time, default roles)
            max_pdu, class_uid, version_name = _user_information(value)
    return AssociateRequest(
        called_ae=_text(body[4:20]), calling_ae=_text(body[20:36]),
        called_ae_field=body[4:20], calling_ae_field=body[20:36],
        application_context=application_context, contexts=tuple(contexts), max_pdu=max_pdu,
        implementation_class_uid=class_uid, implementation_version_name=version_name,
    )


def _user_information(value: bytes) -> tuple[int, str, str]:
    """Maximum length (0 when absent: no limit), implementation class UID and version name."""
    max_pdu, class_uid, version_name = 0, "", ""
    for sub, sub_value in _items(value, 0, len(value)):
        if sub == 0x51:
            if len(sub_value) != 4:
                raise ProtocolError("maximum length sub-item is not 4 bytes")
            max_pdu = int.from_bytes(sub_value, "big")
        elif sub == 0x52:
            class_uid = _text(sub_value)
        elif sub == 0x55:
            version_name = _text(sub_value)
    return max_pdu, class_uid, version_name


@dataclass(frozen=True)
class AssociateAccept:
    """What an A-ASSOCIATE-AC says: each proposed context's result, and the peer's limit."""

    contexts: tuple[ContextResult, ...]  # abstract_syntax is not sent back: ""
    max_pdu: int = 0  # the most the peer receives in one P-DATA-TF (variable field); 0: no limit
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


def parse_associate_ac(body: bytes) -> AssociateAccept:
    """The variable part of an A-ASSOCIATE-AC PDU (after the 6-byte PDU header)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-AC shorter than its fixed fields")
    contexts: list[ContextResult] = []
    max_pdu, class_uid, version_name = 0, "", ""
    for kind, value in _items(body, 68, len(body)):
        if kind == 0x21:
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            syntax = ""
            for sub, sub_value in _items(value, 4, len(value)):
                if sub == 0x40:
                    syntax = _text(sub_value)
            contexts.append(ContextResult(value[0], value[2], syntax))
        elif kind == 0x50:
            max_pdu, class_uid, version_name = _user_information(value)
    return AssociateAccept(tuple(contexts), max_pdu, class_uid, version_name)


def parse_associate_rj(body: bytes) -> tuple[int, int, int]:
    """Result, source and reason of an A-ASSOCIATE-RJ."""
    if len(body) < 4:
        raise ProtocolError("A-ASSOCIATE-RJ shorter than its fields")
    return body[1], body[2], body[3]


def parse_abort(body: bytes) -> tuple[int, int]:
    """Source and reason of an A-ABORT (zeros if it is too short to say)."""
    return (body[2], body[3]) if len(body) >= 4 else (0, 0)


def _pdu(kind: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(kind, len(body)) + body


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(kind, len(value)) + value


def _ae_field(ae_title: str) -> bytes:
    return ae_title.encode("ascii").ljust(16)[:16]


def _user_information_item(max_pdu: int, implementation_class_uid: str,
                           implementation_version_name: str) -> bytes:
    return _item(0x50, _item(0x51, min(max_pdu, 0xFFFFFFFF).to_bytes(4, "big"))
                 + _item(0x52, implementation_class_uid.encode("ascii"))
                 + _item(0x55, implementation_version_name.encode("ascii")))


def encode_associate_rq(
    called_ae: str,
    calling_ae: str,
    contexts: Sequence[ProposedContext],
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    fixed = b"\x00\x01\x00\x00" + _ae_field(called_ae) + _ae_field(calling_ae) + bytes(32)
    items = b"".join(
        _item(0x20, bytes((cx.id, 0, 0, 0)) + _item(0x30, cx.abstract_syntax.encode("ascii"))
              + b"".join(_item(0x40, ts.encode("ascii")) for ts in cx.transfer_syntaxes))
        for cx in contexts
    )
    user = _user_information_item(max_pdu, implementation_class_uid, implementation_version_name)
    return _pdu(A_ASSOCIATE_RQ,
                fixed + _item(0x10, APPLICATION_CONTEXT.encode("ascii")) + items + user)


def encode_associate_ac(
    rq: AssociateRequest,
    ae_title: str,
    results: Sequence[ContextResult],
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    fixed = b"\x00\x01\x00\x00" + _ae_field(ae_title) + rq.calling_ae_field + bytes(32)
    contexts = b"".join(
        _item(0x21, bytes((r.id, 0, r.result, 0)) + _item(0x40, r.transfer_syntax.encode("ascii")))
        for r in results
    )
    user = _user_information_item(max_pdu, implementation_class_uid, implementation_version_name)
    return _pdu(A_ASSOCIATE_AC,
                fixed + _item(0x10, APPLICATION_CONTEXT.encode("ascii")) + contexts + user)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_abort(source: int, reason: int) -> bytes:
    return _pdu(A_ABORT, bytes((0, 0, source, reason)))


RELEASE_RQ = _pdu(A_RELEASE_RQ, bytes(4))
RELEASE_RP = _pdu(A_RELEASE_RP, bytes(4))
PDV_OVERHEAD = 6  # the PDV item's length, context ID and message control header


def p_data_header(context_id: int, length: int, command: bool, last: bool) -> bytes:
    """The P-DATA-TF PDU header and PDV header for one fragment of ``length`` bytes, alone in
    its PDU: the 12 bytes to send before the fragment itself."""
    flags = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return (_PDU_HEADER.pack(P_DATA_TF, length + PDV_OVERHEAD)
            + PDV_HEADER.pack(length + 2, context_id, flags))


def p_data_tf(context_id: int, command: bytes, max_pdu: int) -> bytes:
    """A command set as P-DATA-TF PDUs no longer than the peer's ``max_pdu`` (0: no limit)."""
    room = max(max_pdu - PDV_OVERHEAD, 1) if max_pdu else len(command)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = start + room >= len(command)
        pdus.append(p_data_header(context_id, len(fragment), True, last) + fragment)
    return b"".join(pdus)


# --- DIMSE command sets: implicit VR little endian, group 0000 only ------------------------------


Command = dict[int, bytes]  # element number in group 0000 -> value


def decode_command(data: bytes | bytearray) -> Command:
    command: Command = {}
    position, end = 0, len(data)
    while position < end:
        if position + 8 > end:
            raise ProtocolError("command element header runs past the command set")
        group, element, length = _COMMAND_ELEMENT.unpack_from(data, position)
        position += 8
        if group != 0 or position + length > end:
            raise ProtocolError("command set is not one group 0000 of whole elements")
        command[element] = bytes(data[position : position + length])
        position += length
    return command


def command_us(command: Command, element: int) -> int | None:
    value = command.get(element)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def command_ui(command: Command, element: int) -> str | None:
    value = command.get(element)
    return _text(value) if value is not None else None


def _us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw  # PS3.5 6.2: UIDs padded with NUL


def encode_command(elements: dict[int, bytes]) -> bytes:
    body = b"".join(_COMMAND_ELEMENT.pack(0, e, len(v)) + v for e, v in sorted(elements.items()))
    return _COMMAND_ELEMENT.pack(0, 0, 4) + len(body).to_bytes(4, "little") + body


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    return encode_command({
        AFFECTED_SOP_CLASS_UID: _ui(sop_class_uid),
        COMMAND_FIELD: _us(C_STORE_RQ),
        MESSAGE_ID: _us(message_id),
        PRIORITY: _us(PRIORITY_MEDIUM),
        COMMAND_DATA_SET_TYPE: _us(DATA_SET_FOLLOWS),
        AFFECTED_SOP_INSTANCE_UID: _ui(sop_instance_uid),
    })


def c_echo_rq(message_id: int) -> bytes:
    return encode_command({
        AFFECTED_SOP_CLASS_UID: _ui(VERIFICATION),
        COMMAND_FIELD: _us(C_ECHO_RQ),
        MESSAGE_ID: _us(message_id),
        COMMAND_DATA_SET_TYPE: _us(NO_DATA_SET),
    })


def response_command(request: Command, status: int) -> bytes | None:
    """The response to ``request`` with ``status``; None for what is not answered (C-CANCEL,
    a response sent to us)."""
    field_ = command_us(request, COMMAND_FIELD)
    if field_ is None or field_ & RESPONSE_BIT or field_ == C_CANCEL_RQ:
        return None
    elements = {
        COMMAND_FIELD: _us(field_ | RESPONSE_BIT),
        MESSAGE_ID_RESPONDED_TO: request.get(MESSAGE_ID, _us(0)),
        COMMAND_DATA_SET_TYPE: _us(NO_DATA_SET),
        STATUS: _us(status),
    }
    sop_class = command_ui(request, AFFECTED_SOP_CLASS_UID) or command_ui(
        request, REQUESTED_SOP_CLASS_UID)
    if sop_class:
        elements[AFFECTED_SOP_CLASS_UID] = _ui(sop_class)
    sop_instance = command_ui(request, AFFECTED_SOP_INSTANCE_UID) or command_ui(
        request, REQUESTED_SOP_INSTANCE_UID)
    if sop_instance:
        elements[AFFECTED_SOP_INSTANCE_UID] = _ui(sop_instance)
    return encode_command(elements)


# --- the server ----------------------------------------------------------------------------------


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


class PduReader:
    """Reads PDUs from a blocking socket through one reused buffer (few system calls), each
    wait bounded by ``timeout`` or, when set, by ``deadline``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray(READ_BUFFER)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0
        self._timeout: float | None = None
        self.deadline: float | None = None  # time.monotonic() the whole read must end by

    def set_timeout(self, seconds: float) -> None:
        if seconds != self._timeout:
            self.sock.settimeout(seconds)
            self._timeout = seconds

    def _fill(self, need: int) -> None:
        """Until ``need`` bytes are buffered (``need`` is small: a header or one byte)."""
        if self.start == self.end:
            self.start = self.end = 0
        elif len(self.buffer) - self.start < need:
            kept = self.end - self.start
            self.buffer[:kept] = bytes(self.view[self.start : self.end])
            self.start, self.end = 0, kept
        while self.end - self.start < need:
            if self.deadline is not None:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline passed")
                self.sock.settimeout(remaining)
                self._timeout = None
            try:
                received = self.sock.recv_into(self.view[self.end :])
            except (ConnectionResetError, ssl.SSLEOFError) as exc:
                raise PeerClosed("connection reset") from exc
            if not received:
                raise PeerClosed("connection closed")
            self.end += received

    def pdu_header(self) -> tuple[int, int]:
        """The next PDU's type and length; a ProtocolError for a type PS3.8 does not define."""
        kind, length = _PDU_HEADER.unpack(self.take(6))
        if kind not in PDU_TYPES:
            raise ProtocolError(f"unrecognized PDU type 0x{kind:02X}", REASON_UNRECOGNIZED_PDU)
        return kind, length

    def pdv_header(self, remaining: int, accepted: Container[int]) -> tuple[int, int, int]:
        """The next PDV of a P-DATA-TF that has ``remaining`` bytes left: its value length,
        presentation context ID and message control header. A ProtocolError if it does not
        fit its PDU or names a context that was not accepted."""
        if remaining < 6:
            raise ProtocolError("P-DATA-TF length does not match its PDVs")
        item_length, context_id, header = PDV_HEADER.unpack(self.take(6))
        if item_length < 2 or item_length + 4 > remaining:
            raise ProtocolError("PDV length does not fit its PDU")
        if context_id not in accepted:
            raise ProtocolError(f"PDV on presentation context {context_id}, not accepted")
        return item_length - 2, context_id, header

    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        return self.end - self.start

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (a header), valid until the next read."""
        self._fill(n)
        chunk = self.view[self.start : self.start + n]
        self.start += n
        return chunk

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes as a new object."""
        out = bytearray()
        self.append_to(out, n)
        return bytes(out)

    def append_to(self, target: bytearray, n: int) -> None:
        while n:
            if self.start == self.end:
                self._fill(1)
            chunk = min(n, self.end - self.start)
            target += self.view[self.start : self.start + chunk]
            self.start += chunk
            n -= chunk


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
                                        name="upperlayer-accept", daemon=True)
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
