"""The de-identify stage: received or read bytes in, a clean instance out, all in memory.

Shared by the offline ``anonymize`` command, quarantine release and the network receiver, so
every path applies the same checks: strict parsing, the engine, then encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.deid.engine import Chunk, Policy, Result, deidentify_dataset, deidentify_encoded


@dataclass(frozen=True)
class CleanInstance:
    result: Result

    @property
    def chunks(self) -> list[Chunk]:
        """The de-identified Part 10 file, in pieces to write as they are."""
        return self.result.chunks

    @property
    def data(self) -> bytes:
        return self.result.data

    @property
    def size(self) -> int:
        return self.result.size

    @property
    def sop_instance_uid(self) -> str:
        return self.result.sop_instance_uid


def deidentify_bytes(data: bytes, policy: Policy, secret: bytes) -> CleanInstance:
    """Raise NotDicom (skip) or an InstanceError (quarantine); otherwise the clean encoding."""
    return CleanInstance(deidentify_encoded(data, policy, secret))


def deidentify_received(dataset: bytes | bytearray, transfer_syntax: str, policy: Policy,
                        secret: bytes) -> CleanInstance:
    """The same for a data set received by C-STORE (no file meta; its transfer syntax known)."""
    return CleanInstance(deidentify_dataset(dataset, transfer_syntax, policy, secret))
