"""DIMSE command sets (PS3.7): implicit VR little endian, group 0000 only; the few commands
and statuses the gateway sends or answers."""

from __future__ import annotations

import struct

from gateway.net.pdu import VERIFICATION, ProtocolError, text

# DIMSE (PS3.7): command fields, the "no data set" marker, statuses
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ, RESPONSE_BIT = 0x0001, 0x0030, 0x0FFF, 0x8000
NO_DATA_SET, DATA_SET_FOLLOWS = 0x0101, 0x0000  # CommandDataSetType: any value but 0x0101 says one follows
PRIORITY_MEDIUM = 0x0000
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700  # C-STORE: refused for now; the sender keeps the instance
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC211  # the store handler raised (pynetdicom answers the same)

# Command set elements (group 0000)
AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID = 0x0002, 0x0003
COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED_TO = 0x0100, 0x0110, 0x0120
PRIORITY, COMMAND_DATA_SET_TYPE, STATUS, ERROR_COMMENT = 0x0700, 0x0800, 0x0900, 0x0902
AFFECTED_SOP_INSTANCE_UID, REQUESTED_SOP_INSTANCE_UID = 0x1000, 0x1001

_COMMAND_ELEMENT = struct.Struct("<HHI")
MAX_ERROR_COMMENT = 64  # Error Comment is LO


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
    return text(value) if value is not None else None


def _us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw  # PS3.5 6.2: UIDs padded with NUL


def _lo(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:MAX_ERROR_COMMENT]
    return raw + b" " if len(raw) % 2 else raw  # PS3.5 6.2: text padded with a space


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


def response_command(request: Command, status: int, error_comment: str = "") -> bytes | None:
    """The response to ``request`` with ``status`` (and an Error Comment if given, cut to 64
    characters); None for what is not answered (C-CANCEL, a response sent to us)."""
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
    if error_comment:
        elements[ERROR_COMMENT] = _lo(error_comment)
    return encode_command(elements)
