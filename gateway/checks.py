"""``check-config``: everything that can be checked before serving, each problem with its key."""

from __future__ import annotations

import errno
import fcntl
import getpass
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.errors import GatewayError
from gateway.health import read_node
from gateway.net.tls import (
    certificate_validity,
    client_context,
    private_key_encrypted,
    private_key_open_to_others,
    server_context,
)
from gateway.resources import check_descriptor_limit, descriptors_needed
from gateway.settings import Settings
from gateway.state import open_engine

CERTIFICATE_WARNING_DAYS = 30
LOCK_FILE = "serve.lock"  # held by the serving gateway (gateway/service.py)


@dataclass(frozen=True)
class Finding:
    ok: bool
    key: str
    message: str
    warning: bool = False  # ok, but needs attention soon

    @property
    def verdict(self) -> str:
        return "error" if not self.ok else ("warning" if self.warning else "ok")


def _check(key: str, what: str, action: Callable[[], object]) -> Finding:
    try:
        said = action()
    except (GatewayError, OSError, ValueError) as exc:
        return Finding(False, key, str(exc).removeprefix(f"{key}: "))  # the key is printed once
    return Finding(True, key, said if isinstance(said, str) else what)


# --- data folder ---------------------------------------------------------------------------------


def _data_dir_writable(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=settings.data_dir):
            pass
    except OSError as exc:
        raise ValueError(_data_dir_advice(settings.data_dir, exc)) from exc
    if os.stat(settings.data_dir).st_mode & 0o077:
        raise ValueError(f"{settings.data_dir} is open to others; `chmod 700` it (serve and "
                         "anonymize do at start): it holds the pseudonym map and originals")


def _data_dir_advice(path: Path, exc: OSError) -> str:
    """What is wrong with the data folder, and what to do, in words (not an errno text)."""
    other = "or set gateway.data_dir to a folder this user may write"
    if exc.errno in (errno.EACCES, errno.EPERM):
        user = getpass.getuser()
        return (f"{path} cannot be created or written by the user {user!r}, who runs the gateway: "
                f"create it for that user (`sudo install -d -m 700 -o {user} {path}`), {other}")
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system; {other}"
    if exc.errno == errno.ENOSPC:
        return f"the disk holding {path} is full; free space, {other}"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{path} (or a folder above it) is a file, not a folder; {other}"
    return f"{path} cannot be used as the data folder ({type(exc).__name__}); {other}"


# --- listening port ------------------------------------------------------------------------------


def _port_free(settings: Settings) -> str | None:
    """None when free; a note when our own gateway (serving from this config) has the port."""
    g = settings.gateway
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((g.host, g.port))
            return None
        except OSError as exc:
            ours = _own_gateway(settings)
            if ours is not None:
                return f"{g.host}:{g.port} is in use by the gateway serving from this config{ours}"
            raise ValueError(f"cannot listen on {g.host}:{g.port} ({exc.strerror}); another "
                             "program has it (not a gateway serving from this data_dir)") from exc


def _own_gateway(settings: Settings) -> str | None:
    """" (pid N)" (or "") when a gateway serves from this data folder; None when none does."""
    node = read_node(settings.data_dir)
    port = str(settings.gateway.port)
    if node.get("running") and str(node.get("listen", "")).rpartition(":")[2] == port:
        return f" (pid {node['pid']})"
    return "" if _serve_lock_held(settings.data_dir / LOCK_FILE) else None


def _serve_lock_held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops a lock we took
    return False


# --- our TLS certificate and key -----------------------------------------------------------------


def _certificate_dates(settings: Settings, now: datetime | None = None) -> Finding:
    path = settings.tls.certificate
    key = "tls.certificate"
    if path is None:
        return Finding(True, key, "no certificate configured")
    try:
        not_before, not_after = certificate_validity(path)
    except (OSError, ValueError) as exc:
        return Finding(False, key, f"{path}: no readable PEM certificate ({exc})")
    now = now or datetime.now(UTC)
    if now < not_before:
        return Finding(False, key, f"{path} is not valid yet (from {not_before:%Y-%m-%d %H:%M} "
                       "UTC): peers refuse it; check this host's clock or the certificate")
    if now >= not_after:
        return Finding(False, key, f"{path} expired on {not_after:%Y-%m-%d}: peers refuse it; "
                       "install a renewed certificate")
    left = not_after - now
    if left < timedelta(days=CERTIFICATE_WARNING_DAYS):
        return Finding(True, key, f"{path} expires on {not_after:%Y-%m-%d} (in {left.days} "
                       "days): renew it before then", warning=True)
    return Finding(True, key, f"valid until {not_after:%Y-%m-%d}")


def _private_key_safe(settings: Settings) -> str:
    path = settings.tls.private_key
    if path is None:
        return "no private key configured"
    if private_key_open_to_others(path):
        mode = os.stat(path).st_mode & 0o777
        raise ValueError(f"{path} is readable by others (mode {mode:04o}); `chmod 600 {path}`: "
                         "whoever reads the key can pose as this gateway")
    if private_key_encrypted(path):
        raise ValueError("the private key is encrypted (passphrase-protected); the gateway cannot "
                         f"ask for a passphrase: write it decrypted (`openssl pkey -in {path} -out "
                         "NEW_KEY`, `chmod 600 NEW_KEY`) and name that file")
    return "readable by its owner only"


def tls_files_for_serving(settings: Settings) -> list[Finding]:
    """What ``serve`` checks of its certificate and key before it listens: only when it uses
    them (serving TLS, or presenting them to a TLS archive)."""
    tls = settings.tls
    if not (tls.enabled or any(d.tls for d in settings.destinations)):
        return []
    findings = []
    if tls.certificate is not None:
        findings.append(_certificate_dates(settings))
    if tls.private_key is not None:
        findings.append(_check("tls.private_key", "", lambda: _private_key_safe(settings)))
    return findings


def _tls_findings(settings: Settings) -> list[Finding]:
    findings = []
    tls = settings.tls
    if tls.certificate is not None:
        findings.append(_certificate_dates(settings))
    if tls.private_key is not None:
        findings.append(_check("tls.private_key", "", lambda: _private_key_safe(settings)))
    if tls.enabled:
        findings.append(_check("tls.certificate", "TLS certificate and key load",
                               lambda: server_context(settings.tls)))
    if any(d.tls for d in settings.destinations):
        findings.append(_check("tls.ca_certificates", "CA certificates load",
                               lambda: client_context(settings.tls)))
    return findings


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
    return findings + _tls_findings(settings)


def online_checks(settings: Settings) -> list[Finding]:
    from gateway.forward import echo_explained

    findings = []
    for index, d in enumerate(settings.destinations):
        status, why = echo_explained(settings, d)
        key = f"destinations[{index}]"
        where = f"{d.name} ({d.ae_title}@{d.host}:{d.port})"
        if status == 0:
            findings.append(Finding(True, key, f"{where} answers C-ECHO"))
        elif status is not None:
            findings.append(Finding(False, key, f"{where}: C-ECHO status 0x{status:04X}"))
        elif why.startswith("TLS"):
            findings.append(Finding(False, key, f"{where}: {why}"))
        else:
            findings.append(Finding(False, key, f"{where}: no association ({why}); check host, "
                                    "port, ae_title and that the archive knows our AE title"))
    return findings
