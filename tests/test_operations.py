"""Operating the gateway: Prometheus metrics while it serves, and check-config's verdicts."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from netpeers import (
    DestinationSpec,
    Peers,
    free_port,
    requires_dcmtk,
    storescu,
    wait_for,
    write_study,
)

pytestmark = requires_dcmtk


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    return values[0] if values else -1.0


def test_metrics_count_what_the_gateway_did(peers: Peers, tmp_path: Path) -> None:
    metrics_port = free_port()
    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra=f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')
    study = write_study(tmp_path / "src", "MRN-METRICS", "Metrics^Mary", series=1, per_series=3,
                        tiny=True)
    assert storescu(gateway.port, study.paths).returncode == 0

    def forwarded_three() -> bool:
        text = scrape(metrics_port)
        return metric(text, 'dicom_gateway_instances_forwarded_total{destination="archive"}') == 3

    wait_for(forwarded_three, 30, "three forwarded instances in /metrics")
    text = scrape(metrics_port)
    assert metric(text, 'dicom_gateway_instances_received_total{calling_ae="MODALITY"}') == 3
    assert metric(text, "dicom_gateway_deidentify_seconds_count") == 3
    assert metric(text, 'dicom_gateway_forward_seconds_count{destination="archive"}') == 3
    assert metric(text, 'dicom_gateway_queue_depth{destination="archive"}') == 0
    assert metric(text, "dicom_gateway_active_associations") >= 0
    assert "Metrics" not in text and "MRN-METRICS" not in text


def check_config(cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config",
                           "gw.toml", *extra], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def write_config(tmp: Path, archive_port: int, extra: str = "") -> None:
    (tmp / "gw.toml").write_text(f"""
[gateway]
port = {free_port()}
secret_file = "secret.key"
{extra}
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
port = {archive_port}
""")
    (tmp / "secret.key").write_text("ab" * 32)


def test_check_config_passes_a_good_config_and_reaches_the_archive_online(
    peers: Peers, tmp_path: Path
) -> None:
    archive = peers.archive()
    write_config(tmp_path, archive.port)
    offline = check_config(tmp_path)
    assert offline.returncode == 0, offline.stdout
    assert "error" not in offline.stdout
    online = check_config(tmp_path, "--online")
    assert online.returncode == 0, online.stdout
    assert "ok: destinations[0]: archive (ARCHIVE@127.0.0.1" in online.stdout


def test_check_config_names_the_key_and_the_fix(tmp_path: Path) -> None:
    write_config(tmp_path, free_port(), extra="max_associatons = 4")
    result = check_config(tmp_path)
    assert result.returncode == 2
    assert "gateway.max_associatons: unknown key; did you mean 'max_associations'?" in result.stdout


def test_check_config_online_reports_an_unreachable_archive(tmp_path: Path) -> None:
    write_config(tmp_path, free_port())
    result = check_config(tmp_path, "--online")
    assert result.returncode == 2
    assert "error: destinations[0]: archive (ARCHIVE@127.0.0.1" in result.stdout
    assert "no association" in result.stdout


def test_nothing_persisted_means_out_of_resources_and_the_sender_keeps_the_image(
    peers: Peers, tmp_path: Path
) -> None:
    from netpeers import store_file_as_is

    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    study = write_study(tmp_path / "src", "MRN-FULL", "Full^Disk", series=1, per_series=2,
                       tiny=True)
    incoming = gateway.workdir / "var" / "spool" / "incoming"
    incoming.rmdir()
    incoming.write_text("")  # the spool cannot take a file any more, as on a full disk

    assert store_file_as_is(gateway.port, study.paths[0]) == 0xA700
    assert gateway.answers_echo()
    assert gateway.status()["received"] == 0  # not counted: the sender will send it again

    incoming.unlink()
    incoming.mkdir(mode=0o700)
    assert store_file_as_is(gateway.port, study.paths[0]) == 0x0000
    wait_for(lambda: len(archive.files()) == 1, 30, "the retried instance at the archive")


def test_a_connection_that_never_associates_does_not_hold_up_shutdown(peers: Peers) -> None:
    import socket

    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5):
        # acse_timeout is 30 s and netpeers gives SIGTERM 30 s before it kills (code None)
        assert gateway.stop() == 0


def test_a_second_gateway_on_the_same_data_folder_refuses_to_start(peers: Peers) -> None:
    import subprocess
    import sys

    archive = peers.archive()
    first = peers.gateway([DestinationSpec("archive", archive.port)])
    other = first.config_path.with_name("second.toml")
    other.write_text(first.config.replace(f"port = {first.port}", f"port = {free_port()}", 1))
    second = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(other)],
        cwd=first.workdir, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 2
    assert "another gateway is serving from var" in second.stderr
    assert first.answers_echo()
