"""README sync: every `dicom-gateway` command in README.md's ``sh`` blocks is run, in order, against
the example configuration, so the guide cannot drift from the program."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from netpeers import eventually, free_port, listening
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WAIT = 30.0
# Commands that end in exit status 1 in this scenario: the export holds a truncated file, so
# anonymize quarantines it, and releasing it fails again.
EXPECTED_ONE = (["anonymize"], ["quarantine", "release"])


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert commands, "README.md has no sh blocks"
    return commands


def test_every_sh_line_in_the_readme_is_a_gateway_command() -> None:
    strays = [c for c in readme_commands() if not c.startswith("dicom-gateway ")]
    assert strays == []


def test_the_two_fresh_machine_commands_are_make_run_and_make_test() -> None:
    text = README.read_text()
    assert "\n    make run\n" in text and "\n    make test\n" in text
    run = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "init-secret var/secret.key --exist-ok" in run
    assert "serve --config config/gateway.toml" in run
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("storescp") is None, reason="needs dcmtk storescp")
def test_every_readme_command_runs_as_documented(tmp_path: Path) -> None:
    port, archive_port = free_port(), free_port()
    (tmp_path / "config").mkdir()
    config = (ROOT / "config" / "gateway.toml").read_text()
    config = config.replace("port = 11112", f"port = {port}")
    config = config.replace("port = 11113", f"port = {archive_port}")
    config = config.replace('"127.0.0.1:8080"', f'"127.0.0.1:{free_port()}"')  # the web console
    (tmp_path / "config" / "gateway.toml").write_text(config)
    shutil.copy(ROOT / "config" / "pixel-rules.toml", tmp_path / "config")
    export, anonymized = tmp_path / "export", tmp_path / "anonymized"
    export.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), export / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), export / "mr.dcm")
    shutil.copy(get_testdata_file("OBXXXX1A.dcm"), export / "us.dcm")  # a Philips US: a shipped rule
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (export / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (tmp_path / "archive").mkdir()
    archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", "archive",
                                str(archive_port)], cwd=tmp_path)
    substitutions = {
        "/data/export": str(export),
        "/data/export/us.dcm": str(export / "us.dcm"),
        "/data/anonymized": str(anonymized),
        "/secure/backups/gateway": str(tmp_path / "backup"),
    }
    try:
        assert eventually(lambda: listening(archive_port))
        for command in readme_commands():
            args = shlex.split(command)[1:]
            for old, new in substitutions.items():
                args = [new if a == old else a for a in args]
            if args[0] == "serve":
                run_serve_briefly(args, tmp_path, port)
                continue
            if "QUARANTINE_ID" in args:
                args = [quarantine_id(tmp_path) if a == "QUARANTINE_ID" else a for a in args]
            if "ANON3F2A9C1B7E4D5A60" in args:
                args = [pseudonym(tmp_path) if a.startswith("ANON") else a for a in args]
            result = gateway(*args, cwd=tmp_path)
            expected = 1 if any(args[: len(p)] == p for p in EXPECTED_ONE) else 0
            assert result.returncode == expected, (command, result.stdout, result.stderr)
    finally:
        archive.terminate()
        archive.wait(timeout=WAIT)
    assert (tmp_path / "backup" / "manifest.json").is_file()
    assert (tmp_path / "key.csv").read_text().startswith("kind,original,pseudonym")


def quarantine_id(cwd: Path) -> str:
    listed = gateway("quarantine", "list", "--config", "config/gateway.toml", "--json", cwd=cwd)
    records = json.loads(listed.stdout)
    assert records, "the scenario needs a quarantine entry"
    return str(records[0]["id"])


def pseudonym(cwd: Path) -> str:
    exported = gateway("map", "export", "--config", "config/gateway.toml", "--kind", "patient",
                       cwd=cwd)
    rows = [line.split(",") for line in exported.stdout.splitlines()[1:]]
    assert rows, "the scenario needs a patient in the map"
    return rows[0][2]


def run_serve_briefly(args: list[str], cwd: Path, port: int) -> None:
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert eventually(lambda: listening(port)), "serve did not start listening"
    finally:
        process.terminate()
        assert process.wait(timeout=WAIT) == 0
