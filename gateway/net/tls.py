"""TLS contexts for inbound (the gateway as server) and outbound (towards archives) associations,
and the checks and messages that tell an administrator what is wrong with a certificate."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import ConfigError
from gateway.settings import TlsSettings

# Verification results (OpenSSL X509_V_ERR_*) that mean the archive's CA is not the one we trust.
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21})
_EXPIRED_CODES = frozenset({9, 10})  # not yet valid, expired
_NAME_MISMATCH_CODES = frozenset({62, 64})  # host name, IP address


class EncryptedPrivateKey(ConfigError):
    """The private key needs a passphrase the gateway does not have."""


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal (or fail with "Invalid argument").
    raise EncryptedPrivateKey("tls.private_key: the private key is encrypted "
                              "(passphrase-protected); the gateway cannot ask for a passphrase: "
                              "write it decrypted (`openssl pkey -in KEY -out NEW_KEY`, then "
                              "`chmod 600 NEW_KEY`) and name that file")


def _load_chain(context: ssl.SSLContext, tls: TlsSettings) -> None:
    context.load_cert_chain(str(tls.certificate), str(tls.private_key), password=_refuse_passphrase)


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        _load_chain(context, tls)
        if tls.ca_certificates is not None:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.certificate/tls.private_key: cannot load ({_reason(exc)})") from exc
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else (
        ssl.CERT_OPTIONAL if tls.ca_certificates is not None else ssl.CERT_NONE)
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """Verifies the archive against tls.ca_certificates; presents our certificate if we have one."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(tls.ca_certificates))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.ca_certificates: cannot load ({_reason(exc)})") from exc
    if tls.certificate is not None and tls.private_key is not None:
        try:
            _load_chain(context, tls)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls.certificate/tls.private_key: cannot load ({_reason(exc)})") \
                from exc
    return context


def _reason(exc: OSError) -> str:
    """OpenSSL's reason ("KEY_VALUES_MISMATCH"), or the system's words, not "[Errno 22] ..."."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return exc.strerror or type(exc).__name__


# --- what check-config says about our own certificate and key ---------------------------------


def certificate_validity(path: Path) -> tuple[datetime, datetime]:
    """notBefore and notAfter of the first certificate in a PEM file (text around it allowed).
    Raises ValueError for a file that holds no readable certificate."""
    text = path.read_text(encoding="ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate in it")
    der = ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)])
    return _validity(der)


def _der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``at``."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[at:at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated certificate")
    return tag, at, at + length


def _validity(der: bytes) -> tuple[datetime, datetime]:
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    # signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }  (RFC 5280)
    try:
        _, tbs, _ = _der_item(der, 0)
        _, at, _ = _der_item(der, tbs)
        if der[at] == 0xA0:  # explicit version
            at = _der_item(der, at)[2]
        for _ in range(3):  # serialNumber, signature, issuer
            at = _der_item(der, at)[2]
        _, validity, _ = _der_item(der, at)
        before_tag, before_start, before_end = _der_item(der, validity)
        after_tag, after_start, after_end = _der_item(der, before_end)
        return (_der_time(before_tag, der[before_start:before_end]),
                _der_time(after_tag, der[after_start:after_end]))
    except IndexError as exc:
        raise ValueError("truncated certificate") from exc


def _der_time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime: two-digit years, 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        century = "19" if int(text[:2]) >= 50 else "20"
        text = century + text
    elif tag != 0x18:  # GeneralizedTime
        raise ValueError("not a certificate time")
    return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def private_key_open_to_others(path: Path) -> bool:
    return bool(os.stat(path).st_mode & 0o077)


def private_key_encrypted(path: Path) -> bool:
    """A PEM key with a passphrase: PKCS#8 "ENCRYPTED PRIVATE KEY" or the old Proc-Type header."""
    text = path.read_text(encoding="ascii", errors="replace")
    return "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text or "Proc-Type: 4,ENCRYPTED" in text


# --- what a failed handshake with an archive means ---------------------------------------------


def handshake_failure(exc: OSError, server_name: str) -> str:
    """Why the TLS handshake with an archive failed, in words an administrator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        said = (exc.verify_message or "verification failed").rstrip(".")
        code = exc.verify_code
        if code in _UNTRUSTED_CODES:
            hint = "it is not signed by a CA in tls.ca_certificates"
        elif code in _EXPIRED_CODES:
            hint = "the archive must renew its certificate (or check this host's clock)"
        elif code in _NAME_MISMATCH_CODES:
            hint = (f"the certificate is not for {server_name!r}: set the destination's "
                    "tls_server_name to the name in it, or connect by that name")
        else:
            hint = "see the archive's certificate"
        return f"TLS: the archive's certificate is not accepted: {said}; {hint}"
    if isinstance(exc, ssl.SSLEOFError | ConnectionError) or (
            isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER"):
        return ("TLS: the archive ended the handshake: does it speak TLS on this port? (or it "
                "refused our client certificate)")
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"TLS handshake failed: {_reason(exc)}"
    return f"TLS handshake failed ({type(exc).__name__})"
