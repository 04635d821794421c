"""TLS problems say what they are: our certificate's dates, our key's permissions and passphrase
(check-config), and why an archive's handshake failed (check-config --online). Certificates are
made with the openssl command; the archives are real TLS (or plain) servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.settings import SECRET_ENV

CA_CONFIG = """[ca]
default_ca = ca
[ca]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = copy
[any]
commonName = supplied
"""


NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # fast keys


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and certificates signed by it: for 127.0.0.1, for another host, expired, not yet
    valid, expiring in 10 days; and a self-signed one nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", *NEW_KEY, "-keyout", d / "ca.key", "-out",
            d / "ca.pem", "-days", "30", "-subj", "/CN=Test CA")
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(CA_CONFIG.format(dir=d))
    dates = {"good": ("-days", "365"), "other": ("-days", "365"), "soon": ("-days", "10"),
             "expired": ("-startdate", "20200101000000Z", "-enddate", "20210101000000Z"),
             "future": ("-startdate", "20990101000000Z", "-enddate", "20991231000000Z")}
    for name, validity in dates.items():
        host = "other.example" if name == "other" else "127.0.0.1"
        san = f"DNS:{host}" if name == "other" else f"IP:{host}"
        openssl("req", *NEW_KEY, "-keyout", d / f"{name}.key", "-out",
                d / f"{name}.csr", "-subj", f"/CN={host}", "-addext", f"subjectAltName={san}")
        openssl("ca", "-batch", "-notext", "-config", d / "ca.cnf", "-cert", d / "ca.pem",
                "-keyfile", d / "ca.key", "-in", d / f"{name}.csr", "-out", d / f"{name}.pem",
                *validity)
        (d / f"{name}.key").chmod(0o600)
    openssl("req", "-x509", *NEW_KEY, "-keyout", d / "self.key", "-out",
            d / "self.pem", "-days", "30", "-subj", "/CN=127.0.0.1", "-addext",
            "subjectAltName=IP:127.0.0.1")
    openssl("pkey", "-in", d / "good.key", "-out", d / "encrypted.key", "-aes256", "-passout",
            "pass:secret")
    (d / "encrypted.key").chmod(0o600)
    return d


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


def write_config(tmp_path: Path, tls: str, destination_port: int = 11113) -> Path:
    (tmp_path / "secret.key").write_text("ab" * 32 + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\nsecret_file = "{tmp_path / "secret.key"}"\n'
                    f'port = {port}\n\n[[destinations]]\nname = "a"\nae_title = "A"\nhost = "127.0.0.1"\n'
                    f"port = {destination_port}\ntls = true\n\n[tls]\n{tls}\n")
    return path


def our_tls(pki: Path, name: str, key: str | None = None) -> str:
    return (f'certificate = "{pki / f"{name}.pem"}"\nprivate_key = "{pki / (key or f"{name}.key")}"\n'
            f'ca_certificates = "{pki / "ca.pem"}"\n')


def findings(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(["check-config", *args])
    return status, capsys.readouterr().out.splitlines()


# --- our own certificate and key ----------------------------------------------------------------


def test_a_certificate_expiring_within_30_days_is_a_warning(pki, tmp_path, capsys):
    status, out = findings(capsys, "--config", str(write_config(tmp_path, our_tls(pki, "soon"))))
    [line] = [x for x in out if x.startswith("warning: tls.certificate:")]
    assert status == 0
    assert "expires on" in line and "renew it before then" in line


@pytest.mark.parametrize(("name", "said"), [("expired", "expired on 2021-01-01"),
                                            ("future", "is not valid yet (from 2099-01-01")])
def test_an_expired_or_not_yet_valid_certificate_is_refused(pki, tmp_path, capsys, name, said):
    status, out = findings(capsys, "--config", str(write_config(tmp_path, our_tls(pki, name))))
    assert status == 2
    assert [x for x in out if x.startswith("error: tls.certificate:") and said in x]


def test_a_private_key_readable_by_others_is_refused(pki, tmp_path, capsys):
    key = tmp_path / "open.key"
    key.write_bytes((pki / "good.key").read_bytes())
    key.chmod(0o644)
    status, out = findings(capsys, "--config",
                           str(write_config(tmp_path, our_tls(pki, "good", str(key)))))
    assert status == 2
    assert (f"error: tls.private_key: {key} is readable by others (mode 0644); `chmod 600 {key}`: "
            "whoever reads the key can pose as this gateway") in out


@pytest.mark.parametrize(("name", "key_mode", "said"), [
    ("expired", 0o600, "tls.certificate: {dir}/expired.pem expired on 2021-01-01"),
    ("good", 0o644, "tls.private_key: {tmp}/key.pem is readable by others (mode 0644)"),
])
def test_serve_refuses_an_expired_certificate_or_an_open_key_before_listening(
        pki, tmp_path, name, key_mode, said):
    key = tmp_path / "key.pem"
    key.write_bytes((pki / f"{name}.key").read_bytes())
    key.chmod(key_mode)
    config = write_config(tmp_path, "enabled = true\n" + our_tls(pki, name, str(key)))
    served = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert served.returncode == 2
    assert said.format(dir=pki, tmp=tmp_path) in served.stderr
    assert '"event": "started"' not in served.stderr


def test_serve_warns_of_a_certificate_expiring_soon_and_ignores_unused_ones(pki, tmp_path):
    from gateway.service import refuse_unusable_tls_files
    from gateway.settings import load_settings

    refuse_unusable_tls_files(load_settings(write_config(tmp_path, our_tls(pki, "soon"))))
    unused = write_config(tmp_path, our_tls(pki, "expired")).read_text().replace(
        "tls = true", "tls = false")
    (tmp_path / "unused.toml").write_text(unused)
    refuse_unusable_tls_files(load_settings(tmp_path / "unused.toml"))  # TLS is off everywhere


def test_a_passphrase_protected_key_is_called_encrypted(pki, tmp_path, capsys):
    config = write_config(tmp_path, "enabled = true\n" + our_tls(pki, "good", "encrypted.key"))
    status, out = findings(capsys, "--config", str(config))
    assert status == 2
    errors = [x for x in out if x.startswith("error: tls.")]
    assert errors and all("the private key is encrypted (passphrase-protected)" in x for x in errors)
    assert not any("Invalid argument" in x for x in out)


# --- why the archive's handshake failed --------------------------------------------------------


@contextlib.contextmanager
def archive(pki: Path | None, name: str = "") -> Iterator[int]:
    """A server on 127.0.0.1 that does a TLS handshake with ``name``'s certificate (or, without
    pki, reads what comes and closes, as a plain DICOM archive does with a TLS hello)."""
    context = None
    if pki is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    if context is None:
                        conn.recv(6)  # a PDU header that is no PDU: the archive hangs up
                    else:
                        context.wrap_socket(conn, server_side=True).recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not)
        thread.join(10)
        server.close()


@pytest.mark.parametrize(("name", "said"), [
    ("self", "TLS: the archive's certificate is not accepted: self-signed certificate; it is not "
             "signed by a CA in tls.ca_certificates"),
    ("expired", "TLS: the archive's certificate is not accepted: certificate has expired; the "
                "archive must renew its certificate"),
    ("other", "TLS: the archive's certificate is not accepted: IP address mismatch, certificate "
              "is not valid for '127.0.0.1'; the certificate is not for '127.0.0.1': set the "
              "destination's tls_server_name"),
], ids=["untrusted", "expired", "other-host"])
def test_online_check_says_why_the_archive_certificate_is_refused(pki, tmp_path, capsys, name, said):
    with archive(pki, name) as port:
        config = write_config(tmp_path, f'ca_certificates = "{pki / "ca.pem"}"\n', port)
        status, out = findings(capsys, "--config", str(config), "--online")
    [line] = [x for x in out if x.startswith("error: destinations[0]:")]
    assert status == 2
    assert said in line
    assert "check host, port" not in line


def test_online_check_says_when_the_archive_does_not_speak_tls(pki, tmp_path, capsys):
    with archive(None) as port:
        config = write_config(tmp_path, f'ca_certificates = "{pki / "ca.pem"}"\n', port)
        status, out = findings(capsys, "--config", str(config), "--online")
    [line] = [x for x in out if x.startswith("error: destinations[0]:")]
    assert status == 2
    assert "does it speak TLS on this port?" in line
