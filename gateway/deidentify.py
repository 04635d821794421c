"""The de-identify stage: received or read bytes in, a clean instance out, all in memory.

Shared by the offline ``anonymize`` command, quarantine release and the network receiver, so
every path applies the same checks: strict parsing, the engine, then encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.deid.engine import Policy, Result, deidentify_encoded


@dataclass(frozen=True)
class CleanInstance:
    result: Result
    data: bytes  # the de-identified Part 10 file

    @property
    def sop_instance_uid(self) -> str:
        return self.result.sop_instance_uid


def deidentify_bytes(data: bytes, policy: Policy, secret: bytes) -> CleanInstance:
    """Raise NotDicom (skip) or an InstanceError (quarantine); otherwise the clean encoding."""
    result = deidentify_encoded(data, policy, secret)
    return CleanInstance(result, result.data)
