"""Which transfer syntaxes an instance can go out in: its stored one, and the native ones it
converts to without loss (``gateway/transcode.py`` does the converting). Used for every
instance the forwarder proposes, so it loads no codec and no pydicom until a conversion or a
name is wanted.
"""

from __future__ import annotations

from functools import cache

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})
# What an instance may be converted to for an archive that takes neither its own syntax nor a
# compressed one, in order of preference: explicit keeps the VRs.
FALLBACK_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def syntax_name(uid: str) -> str:
    """A transfer syntax's name (``Explicit VR Little Endian``), or its UID if unknown."""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


def is_native(syntax: str) -> bool:
    return syntax in NATIVE


@cache
def has_decoder(syntax: str) -> bool:
    """Whether a pydicom pixel decoder for this encapsulated syntax can run on this machine."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError, ImportError):
        return False


def can_convert(source: str, target: str) -> bool:
    """Whether ``convert(data, source, target)`` can work here (a decoder is installed)."""
    if source == target:
        return True
    if target not in NATIVE:
        return False
    if source in NATIVE:
        return True
    return target in FALLBACK_SYNTAXES and has_decoder(source)


def fallback_syntaxes(stored: str) -> tuple[str, ...]:
    """The native syntaxes an instance stored in ``stored`` can be converted to, in order of
    preference; never ``stored`` itself."""
    return tuple(t for t in FALLBACK_SYNTAXES if t != stored and can_convert(stored, t))


def pad_deflated(data: bytes | memoryview) -> bytes | memoryview:
    """A deflated data set padded to even length with one NUL (PS3.5 A.5), as sent."""
    return bytes(data) + b"\x00" if len(data) % 2 else data
