"""A bounded PDU reader over a blocking socket, shared by the acceptor and the requestor."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Container

from gateway.net.pdu import (
    PDU_HEADER,
    PDU_TYPES,
    PDV_HEADER,
    REASON_UNRECOGNIZED_PDU,
    PeerClosed,
    ProtocolError,
)

READ_BUFFER = 256 * 1024
SMALL_BUFFER = 8 * 1024  # enough for an A-ASSOCIATE-RQ in a few reads; what a pending connection costs


class PduReader:
    """Reads PDUs from a blocking socket through one reused buffer (few system calls), each
    wait bounded by ``timeout`` or, when set, by ``deadline``.

    The deadline may be made to move with the data: ``start_deadline(seconds, bytes_per_second)``
    pushes it later by one second per ``bytes_per_second`` received, so a large transfer at a
    reasonable rate is not cut while a trickle is."""

    def __init__(self, sock: socket.socket, buffer_size: int = READ_BUFFER) -> None:
        self.sock = sock
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0
        self._timeout: float | None = None
        self.deadline: float | None = None  # time.monotonic() the whole read must end by
        self._seconds_per_byte = 0.0  # how much each byte received moves the deadline

    def set_timeout(self, seconds: float) -> None:
        if seconds != self._timeout:
            self.sock.settimeout(seconds)
            self._timeout = seconds

    def start_deadline(self, seconds: float, bytes_per_second: float = 0.0) -> None:
        """From now, reads must end within ``seconds``, plus 1 s per ``bytes_per_second``
        received from now on (0: no extension); until ``deadline`` is set to None."""
        self.deadline = time.monotonic() + seconds
        self._seconds_per_byte = 1.0 / bytes_per_second if bytes_per_second > 0 else 0.0

    def grow(self, size: int = READ_BUFFER) -> None:
        """A larger buffer (what is buffered is kept): once a connection is worth it."""
        if len(self.buffer) >= size:
            return
        kept = self.end - self.start
        buffer = bytearray(size)
        buffer[:kept] = self.view[self.start : self.end]
        self.buffer, self.view = buffer, memoryview(buffer)
        self.start, self.end = 0, kept

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
            except TimeoutError:
                if self.deadline is None:
                    raise
                continue  # the deadline may have moved with the bytes received: check it again
            if not received:
                raise PeerClosed("connection closed")
            self.end += received
            if self.deadline is not None and self._seconds_per_byte:
                self.deadline += received * self._seconds_per_byte

    def wait_for_data(self, timeout: float) -> None:
        """Until at least one byte is buffered, within ``timeout`` (no deadline applies)."""
        self.deadline = None
        if self.start == self.end:
            self.set_timeout(timeout)
            self._fill(1)

    def pdu_header(self) -> tuple[int, int]:
        """The next PDU's type and length; a ProtocolError for a type PS3.8 does not define."""
        kind, length = PDU_HEADER.unpack(self.take(6))
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

    def skip(self, n: int) -> None:
        """Read and drop the next ``n`` bytes (nothing is kept but the buffer)."""
        while n:
            if self.start == self.end:
                self._fill(1)
            chunk = min(n, self.end - self.start)
            self.start += chunk
            n -= chunk
