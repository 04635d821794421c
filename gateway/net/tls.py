"""TLS contexts for inbound (the gateway as server) and outbound (towards archives) associations."""

from __future__ import annotations

import ssl

from gateway.errors import ConfigError
from gateway.settings import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates is not None:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.certificate/tls.private_key: cannot load ({exc})") from exc
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else (
        ssl.CERT_OPTIONAL if tls.ca_certificates is not None else ssl.CERT_NONE)
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """Verifies the archive against tls.ca_certificates; presents our certificate if we have one."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(tls.ca_certificates))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.certificate is not None and tls.private_key is not None:
            context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.ca_certificates: cannot load ({exc})") from exc
    return context
