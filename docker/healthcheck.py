"""Container health check: C-ECHO the gateway itself.

    python healthcheck.py [--config FILE] [--calling-ae TITLE] [--timeout SECONDS]

Reads the gateway's AE title, port, address and TLS settings from its config (--config, else
$DICOM_GATEWAY_CONFIG, else /etc/dicom-gateway/gateway.toml), opens an association to it over
the loopback interface and sends C-ECHO. Exit status 0 when the gateway answers 0x0000 (success),
1 for anything else: no answer, association rejected or aborted, another status, or a config that
does not load. Every network step is bounded by --timeout (5 s).

The check calls as HEALTHCHECK ($DICOM_GATEWAY_HEALTHCHECK_AE or --calling-ae). When the config
lists gateway.allowed_calling_aes, that list must admit it from the loopback address, e.g.
"HEALTHCHECK@127.0.0.1". With tls.enabled the check speaks TLS without verifying the gateway's
certificate (it is the gateway's own listener, over loopback) and presents tls.certificate.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.errors import GatewayError
from gateway.settings import Settings, load_settings

DEFAULT_CONFIG = "/etc/dicom-gateway/gateway.toml"
CONFIG_ENV = "DICOM_GATEWAY_CONFIG"
CALLING_AE_ENV = "DICOM_GATEWAY_HEALTHCHECK_AE"
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def loopback_address(settings: Settings) -> str:
    """Where to reach the listener from inside its own container or host."""
    host = settings.gateway.host
    return WILDCARDS.get(host, host)


def tls_args(settings: Settings, host: str) -> tuple[ssl.SSLContext, str] | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls.certificate is not None and tls.private_key is not None:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context, host


def check(settings: Settings, calling_ae: str, timeout: float) -> tuple[bool, str]:
    g = settings.gateway
    host = loopback_address(settings)
    where = f"{g.ae_title} at {host}:{g.port}"
    rules = g.allowed_calling_aes
    if rules and not any(r.ae_title == calling_ae and r.address in (None, host) for r in rules):
        return False, (f"{where}: gateway.allowed_calling_aes does not admit this check; add "
                       f'"{calling_ae}@{host}" to it')
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(host, g.port, ae_title=g.ae_title, tls_args=tls_args(settings, host))
    except (OSError, RuntimeError, ValueError, ssl.SSLError) as exc:
        return False, f"{where}: cannot associate ({exc})"
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "refused, aborted or no answer"
        return False, f"{where}: no association ({reason})"
    try:
        response = assoc.send_c_echo()
        status = getattr(response, "Status", None)
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None:
        return False, f"{where}: no C-ECHO response"
    if int(status) != 0:
        return False, f"{where}: C-ECHO status 0x{int(status):04X}"
    return True, f"{where}: C-ECHO success"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="C-ECHO the gateway itself (exit 0: healthy).")
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    parser.add_argument("--calling-ae", default=os.environ.get(CALLING_AE_ENV) or "HEALTHCHECK")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for each network step")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(Path(args.config))
        healthy, message = check(settings, args.calling_ae, args.timeout)
    except GatewayError as exc:
        healthy, message = False, f"config: {exc}"
    except Exception as exc:  # noqa: BLE001 - a health check answers, it does not crash
        healthy, message = False, f"{type(exc).__name__}: {exc}"
    print(("healthy: " if healthy else "unhealthy: ") + message, flush=True)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
