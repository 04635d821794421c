"""The DICOM Upper Layer protocol's PDUs (PS3.8 9.3): constants, the errors that end an
association, and the codec (bytes <-> values, no I/O) both directions use.

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

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError

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
RELEASE_ABORT_LENGTH = 4  # the variable field of A-RELEASE-RQ/RP and A-ABORT: 4 reserved bytes

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE title not recognized
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider (presentation), local limit
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)  # permanent, service-user, context name not supported
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)  # permanent, service-provider (ACSE), version not supported
REJECT_REASONS = {
    REJECT_PROTOCOL_VERSION: "protocol version not supported",
    REJECT_APPLICATION_CONTEXT: "application context name not supported",
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

PDU_HEADER = struct.Struct(">BxI")
_ITEM_HEADER = struct.Struct(">BxH")
PDV_HEADER = struct.Struct(">IBB")


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
    protocol_version: int = 1  # a bit field; bit 0 is version 1, the only one PS3.8 defines

    @property
    def supports_version_1(self) -> bool:
        return bool(self.protocol_version & 0x0001)


@dataclass(frozen=True)
class ContextResult:
    id: int
    result: int
    transfer_syntax: str
    abstract_syntax: str = ""


def text(value: bytes | memoryview) -> str:
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
            application_context = text(value)
        elif kind == 0x20:
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            abstract, transfer = "", []
            for sub, sub_value in _items(value, 4, len(value)):
                if sub == 0x30:
                    abstract = text(sub_value)
                elif sub == 0x40:
                    transfer.append(text(sub_value))
            contexts.append(ProposedContext(value[0], abstract, tuple(transfer)))
        elif kind == 0x50:
            # role selection, extended negotiation, user identity, asynchronous operations
            # window: not answered (one operation at a time, default roles)
            max_pdu, class_uid, version_name = _user_information(value)
    return AssociateRequest(
        called_ae=text(body[4:20]), calling_ae=text(body[20:36]),
        called_ae_field=body[4:20], calling_ae_field=body[20:36],
        application_context=application_context, contexts=tuple(contexts), max_pdu=max_pdu,
        implementation_class_uid=class_uid, implementation_version_name=version_name,
        protocol_version=int.from_bytes(body[0:2], "big"),
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
            class_uid = text(sub_value)
        elif sub == 0x55:
            version_name = text(sub_value)
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
                    syntax = text(sub_value)
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
    return PDU_HEADER.pack(kind, len(body)) + body


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
    return (PDU_HEADER.pack(P_DATA_TF, length + PDV_OVERHEAD)
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
