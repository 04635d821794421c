"""Console passwords: scrypt with a random salt, its parameters stored beside the hash so they
can be raised later without invalidating existing accounts. No web framework imported here: the
``user`` command uses it too."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from gateway.errors import ConfigError

SCHEME = "scrypt"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_MEMORY = 64 * 1024 * 1024  # bound on what a stored hash's parameters may ask for
MIN_PASSWORD_LENGTH = 10
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError("NAME: 1 to 64 letters, digits or . _ @ -")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches; a malformed stored hash matches nothing."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = bytes.fromhex(digest)
        actual = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY,
                          dklen=HASH_BYTES)


# A hash to check against when the account does not exist, so a wrong name costs as long as a
# wrong password (no telling which names exist by timing).
DUMMY_HASH = hash_password(secrets.token_hex(8))
