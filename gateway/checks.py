"""``check-config``: everything that can be checked before serving, each problem with its key."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.net.tls import client_context, server_context
from gateway.resources import check_descriptor_limit, descriptors_needed
from gateway.settings import Settings
from gateway.state import open_engine


@dataclass(frozen=True)
class Finding:
    ok: bool
    key: str
    message: str


def _check(key: str, what: str, action: Callable[[], object]) -> Finding:
    try:
        action()
    except (GatewayError, OSError, ValueError) as exc:
        return Finding(False, key, str(exc).removeprefix(f"{key}: "))  # the key is printed once
    return Finding(True, key, what)


def _data_dir_writable(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.NamedTemporaryFile(dir=settings.data_dir):
        pass
    if os.stat(settings.data_dir).st_mode & 0o077:
        raise ValueError(f"{settings.data_dir} is open to others; `chmod 700` it (serve and "
                         "anonymize do at start): it holds the pseudonym map and originals")


def _port_free(settings: Settings) -> None:
    g = settings.gateway
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((g.host, g.port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {g.host}:{g.port} ({exc.strerror}); another "
                             "program (or a running gateway) has it") from exc


def offline_checks(settings: Settings) -> list[Finding]:
    findings = [
        Finding(True, "config", "types, names, AE titles, ports, options and files are valid"),
        _check("gateway.secret_file", "secret key present", settings.require_secret),
        _check("gateway.data_dir", f"{settings.data_dir} is writable and private",
               lambda: _data_dir_writable(settings)),
        _check("gateway.database_url", "database opens",
               lambda: open_engine(settings.database_url).dispose()),
        _check("gateway.port", f"{settings.gateway.host}:{settings.gateway.port} is free",
               lambda: _port_free(settings)),
        _check("gateway.max_associations",
               f"the file-descriptor limit fits {descriptors_needed(settings)} open files",
               lambda: check_descriptor_limit(settings)),
    ]
    if not settings.destinations:
        findings.append(Finding(False, "destinations", "no [[destinations]]: serve needs one"))
    if settings.tls.enabled:
        findings.append(_check("tls.certificate", "TLS certificate and key load",
                               lambda: server_context(settings.tls)))
    if any(d.tls for d in settings.destinations):
        findings.append(_check("tls.ca_certificates", "CA certificates load",
                               lambda: client_context(settings.tls)))
    return findings


def online_checks(settings: Settings) -> list[Finding]:
    from gateway.forward import echo

    findings = []
    for index, d in enumerate(settings.destinations):
        status = echo(settings, d)
        key = f"destinations[{index}]"
        where = f"{d.name} ({d.ae_title}@{d.host}:{d.port})"
        if status == 0:
            findings.append(Finding(True, key, f"{where} answers C-ECHO"))
        else:
            why = "no association" if status is None else f"C-ECHO status 0x{status:04X}"
            findings.append(Finding(False, key, f"{where}: {why}; check host, port, ae_title "
                                    "and that the archive knows our AE title"))
    return findings
