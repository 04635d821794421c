"""The de-identify stage: received or read bytes in, a clean instance out, all in memory.

Shared by the offline ``anonymize`` command, quarantine release and the network receiver, so
every path applies the same checks: strict parsing, the engine, then, for an instance at risk of
burned-in text, the pixel stage (``gateway.pixels``), when ``[pixels]`` is configured.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.deid.engine import (
    BURNED_IN,
    Chunk,
    Policy,
    Result,
    deidentify_dataset,
    deidentify_encoded,
)
from gateway.pixels.policy import PixelPolicy


@dataclass(frozen=True)
class CleanInstance:
    result: Result
    cleaned_pixels: bytes | None = None  # the file again, when the pixel stage changed it
    cleaned_syntax: str = ""  # its transfer syntax then (compressed pixels come out decoded)

    @property
    def chunks(self) -> list[Chunk]:
        """The de-identified Part 10 file, in pieces to write as they are."""
        return self.result.chunks if self.cleaned_pixels is None else [self.cleaned_pixels]

    @property
    def data(self) -> bytes:
        return self.result.data if self.cleaned_pixels is None else self.cleaned_pixels

    @property
    def size(self) -> int:
        return self.result.size if self.cleaned_pixels is None else len(self.cleaned_pixels)

    @property
    def sop_instance_uid(self) -> str:
        return self.result.sop_instance_uid

    @property
    def transfer_syntax_uid(self) -> str:
        return self.cleaned_syntax or self.result.transfer_syntax_uid


def deidentify_bytes(data: bytes, policy: Policy, secret: bytes,
                     pixels: PixelPolicy | None = None) -> CleanInstance:
    """Raise NotDicom (skip) or an InstanceError (quarantine); otherwise the clean encoding."""
    return _pixel_stage(deidentify_encoded(data, policy, secret), pixels)


def deidentify_received(dataset: bytes | bytearray, transfer_syntax: str, policy: Policy,
                        secret: bytes, pixels: PixelPolicy | None = None) -> CleanInstance:
    """The same for a data set received by C-STORE (no file meta; its transfer syntax known)."""
    return _pixel_stage(deidentify_dataset(dataset, transfer_syntax, policy, secret), pixels)


def _pixel_stage(result: Result, pixels: PixelPolicy | None) -> CleanInstance:
    if pixels is None:
        return CleanInstance(result)
    from gateway.pixels.clean import at_risk, clean_pixels  # pydicom's reader: only with [pixels]

    if not at_risk(result.sop_class_uid, result.modality, result.fact(BURNED_IN),
                   result.transfer_syntax_uid):
        return CleanInstance(result)
    cleaned = clean_pixels(result.data, pixels)
    if cleaned is None:
        return CleanInstance(result)
    return CleanInstance(result, *cleaned)
