"""Keyed UID pseudonyms: the same original UID gives the same new UID wherever the secret is shared.

HMAC-SHA256 rather than a plain hash: without the secret nobody can confirm that a given original
UID maps to a given output UID.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.deid.once import built_once

DEFAULT_ROOT = "2.25"
MAX_UID_LENGTH = 64
# Everything under the DICOM root is defined by the standard (SOP classes, transfer syntaxes,
# well-known frames of reference, coding schemes...), so it identifies no patient.
STANDARD_ROOT = "1.2.840.10008."
# Attributes whose UIDs name a kind of thing, not an instance of it.
CLASS_UID_KEYWORDS_SUFFIXES = ("ClassUID", "TransferSyntaxUID", "CodingSchemeUID")


def is_well_known(uid: str) -> bool:
    return uid.startswith(STANDARD_ROOT) or uid in _uid_dictionary()


@built_once
def _uid_dictionary() -> frozenset[str]:
    """pydicom's well-known UIDs, loaded when first needed: settings import this module in the
    forwarding process too, which never loads pydicom."""
    from pydicom.uid import UID_dictionary

    return frozenset(UID_dictionary)


def keyed_uid(secret: bytes, uid: str, root: str = DEFAULT_ROOT) -> str:
    """``root`` + a decimal integer from HMAC-SHA256(secret, uid), at most 64 characters."""
    digest = hmac.new(secret, b"uid\x00" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
    number = int.from_bytes(digest[:16], "big")  # 128 bits, as a UUID-derived 2.25 UID has
    room = MAX_UID_LENGTH - len(root) - 1
    if len(str(number)) > room:
        number %= 10**room
    return f"{root}.{number}"


class UidMapper:
    """Replaces UIDs for one instance and remembers each pair it produced (for the pseudonym map)."""

    def __init__(self, secret: bytes, root: str = DEFAULT_ROOT) -> None:
        self._secret = secret
        self._root = root
        self.produced: dict[str, str] = {}

    def replace(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid or is_well_known(uid):
            return uid
        new = self.produced.get(uid)
        if new is None:
            new = keyed_uid(self._secret, uid, self._root)
            self.produced[uid] = new
        return new
