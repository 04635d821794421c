"""Packaging: the Docker image's files, the compose demo and the systemd unit.

No Docker engine is needed: the image's entrypoint and health check run here as plain processes,
against the shipped docker/gateway.toml with its paths moved into a temporary folder. The
Dockerfile and compose.yaml are checked by reading them (compose.yaml only where PyYAML is
installed), the unit with systemd-analyze where it is installed. Every process started here is
stopped here, every wait is bounded, and the gateway listens on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.settings import SECRET_ENV, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"
DOCKER_CONFIG = DOCKER / "gateway.toml"
UNIT = ROOT / "systemd" / "dicom-gateway.service"
IMAGE_DATA = "/var/lib/dicom-gateway"
IMAGE_CONFIG = "/etc/dicom-gateway/gateway.toml"
BIN = Path(sys.executable).parent  # the virtual environment's bin: dicom-gateway, python3
SECRET_LINE = re.compile(r"[0-9a-f]{64}\n")
OTHER_SECRET = "ab" * 32 + "\n"
RUN_TIMEOUT = 60.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0

requires_console_script = pytest.mark.skipif(
    not (BIN / "dicom-gateway").exists(), reason=f"dicom-gateway is not installed in {BIN}"
)


# --- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_echo(port: int) -> bool:
    """C-ECHO as HEALTHCHECK. (A bare TCP connect would leave the gateway an association that
    waits out its ACSE timeout, and hold up its shutdown.)"""
    ae = AE(ae_title="HEALTHCHECK")
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2.0
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_GW")
    if not assoc.is_established:
        return False
    try:
        return getattr(assoc.send_c_echo(), "Status", None) == 0
    finally:
        assoc.release()


def plain_env(**extra: str) -> dict[str, str]:
    """A small environment as in the image: no DICOM_GATEWAY_* of the developer's shell."""
    return {"PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **extra}


def docker_config(folder: Path, port: int = 11112, host: str = "0.0.0.0",
                  secret_file: str | None = None) -> Path:
    """docker/gateway.toml with the image's data folder moved to ``folder/data``."""
    text = DOCKER_CONFIG.read_text(encoding="utf-8")
    assert text.count(IMAGE_DATA) >= 2, "data_dir and secret_file live in the image's volume"
    text = text.replace(IMAGE_DATA, str(folder / "data"))
    text = re.sub(r"(?m)^port = 11112\b", f"port = {port}", text, count=1)
    text = re.sub(r'(?m)^host = "0\.0\.0\.0"', f'host = "{host}"', text, count=1)
    if secret_file is not None:
        text = re.sub(r"(?m)^secret_file = .*$", f'secret_file = "{secret_file}"', text, count=1)
    config = folder / "gateway.toml"
    config.write_text(text, encoding="utf-8")
    return config


def run_entrypoint(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENTRYPOINT), *args], cwd=cwd, env=plain_env(**env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def run_healthcheck(config: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), "--config", str(config)], cwd=cwd,
                          env=plain_env(**env), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the image's config -------------------------------------------------------------------------


def test_the_image_config_loads_and_listens_everywhere_for_the_demo(tmp_path):
    config = docker_config(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret.key").write_text(OTHER_SECRET)
    settings = load_settings(config)
    g = settings.gateway
    assert (g.ae_title, g.host, g.port) == ("DICOM_GW", "0.0.0.0", 11112)
    assert g.data_dir == tmp_path / "data"
    assert g.secret_file == tmp_path / "data" / "secret.key"
    assert [(d.name, d.ae_title, d.host, d.port) for d in settings.destinations] == [
        ("research", "RESEARCH", "research", 4242)
    ]
    raw = tomllib.loads(DOCKER_CONFIG.read_text(encoding="utf-8"))["gateway"]
    assert raw["data_dir"] == IMAGE_DATA
    assert raw["secret_file"] == f"{IMAGE_DATA}/secret.key"


def test_the_orthanc_configs_match_the_gateway_config():
    """PACS -> gateway -> research: AE titles, host names and ports agree across the files."""
    gateway = tomllib.loads(DOCKER_CONFIG.read_text(encoding="utf-8"))
    pacs = json.loads((DOCKER / "orthanc-pacs.json").read_text(encoding="utf-8"))
    research = json.loads((DOCKER / "orthanc-research.json").read_text(encoding="utf-8"))
    g = gateway["gateway"]
    (destination,) = gateway["destinations"]
    assert pacs["DicomModalities"]["gateway"] == [g["ae_title"], "gateway", g["port"]]
    assert pacs["DicomAet"] in g["allowed_calling_aes"]
    assert (research["DicomAet"], research["DicomPort"]) == (
        destination["ae_title"], destination["port"])
    assert destination["host"] == "research"
    # The archive takes stores from the declared gateway only.
    assert research["DicomAlwaysAllowStore"] is False
    assert research["DicomModalities"]["gateway"][0] == g["ae_title"]
    assert "HEALTHCHECK@127.0.0.1" in g["allowed_calling_aes"]


# --- the entrypoint -----------------------------------------------------------------------------


def test_the_entrypoint_is_an_executable_posix_shell_script():
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], timeout=RUN_TIMEOUT).returncode == 0


@requires_console_script
def test_the_entrypoint_makes_the_secret_on_first_start_and_keeps_it(tmp_path):
    config = docker_config(tmp_path)
    secret = tmp_path / "data" / "secret.key"

    first = run_entrypoint(["--version"], tmp_path, DICOM_GATEWAY_CONFIG=str(config))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].startswith("dicom-gateway ")
    assert SECRET_LINE.fullmatch(secret.read_text())
    assert mode(secret) == 0o600
    assert mode(secret.parent) == 0o700  # made under the entrypoint's umask 0077
    made = secret.read_text()

    again = run_entrypoint(["--version"], tmp_path, DICOM_GATEWAY_CONFIG=str(config))
    assert again.returncode == 0, again.stderr
    assert secret.read_text() == made


@requires_console_script
def test_the_entrypoint_keeps_a_secret_that_is_there(tmp_path):
    config = docker_config(tmp_path)
    (tmp_path / "data").mkdir(mode=0o700)
    secret = tmp_path / "data" / "secret.key"
    secret.write_text(OTHER_SECRET)
    result = run_entrypoint(["--version"], tmp_path, DICOM_GATEWAY_CONFIG=str(config))
    assert result.returncode == 0, result.stderr
    assert secret.read_text() == OTHER_SECRET


@requires_console_script
@pytest.mark.parametrize("form", ["--config FILE", "--config=FILE"])
def test_the_entrypoint_reads_the_config_the_command_reads(tmp_path, form):
    """--config in the arguments wins over DICOM_GATEWAY_CONFIG, as in the command line."""
    config = docker_config(tmp_path)
    args = ["quarantine", "list", *shlex.split(form.replace("FILE", str(config)))]
    result = run_entrypoint(args, tmp_path, DICOM_GATEWAY_CONFIG=str(tmp_path / "absent.toml"))
    assert result.returncode == 0, result.stderr
    assert "0 in quarantine" in result.stderr  # the command ran, with the key it needs
    assert SECRET_LINE.fullmatch((tmp_path / "data" / "secret.key").read_text())


@requires_console_script
def test_the_entrypoint_refuses_a_secret_variable_that_a_secret_file_would_shadow(tmp_path):
    config = docker_config(tmp_path)
    result = run_entrypoint(["--version"], tmp_path, DICOM_GATEWAY_CONFIG=str(config),
                            **{SECRET_ENV: "cd" * 32})
    assert result.returncode == 2
    assert 'secret_file = ""' in result.stderr
    assert not (tmp_path / "data").exists()


@requires_console_script
def test_the_entrypoint_leaves_the_key_to_the_variable_without_a_secret_file(tmp_path):
    config = docker_config(tmp_path, secret_file="")
    result = run_entrypoint(["quarantine", "list"], tmp_path, DICOM_GATEWAY_CONFIG=str(config),
                            **{SECRET_ENV: "cd" * 32})
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data" / "secret.key").exists()


@requires_console_script
def test_the_entrypoint_never_pairs_a_pseudonym_map_with_a_new_key(tmp_path):
    config = docker_config(tmp_path)
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "data" / "gateway.db").write_bytes(b"")
    result = run_entrypoint(["--version"], tmp_path, DICOM_GATEWAY_CONFIG=str(config))
    assert result.returncode == 2
    assert "gateway.db" in result.stderr and "Restore the key" in result.stderr
    assert not (tmp_path / "data" / "secret.key").exists()


@requires_console_script
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_the_entrypoint_explains_a_data_folder_it_cannot_write(tmp_path):
    config = docker_config(tmp_path)
    (tmp_path / "data").mkdir(mode=0o500)
    try:
        result = run_entrypoint(["--version"], tmp_path, DICOM_GATEWAY_CONFIG=str(config))
    finally:
        (tmp_path / "data").chmod(0o700)
    assert result.returncode == 2
    assert "not writable" in result.stderr and "chown" in result.stderr


# --- the health check ---------------------------------------------------------------------------


@pytest.fixture()
def running_gateway(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The gateway serving docker/gateway.toml on a free loopback port; yields config, process."""
    config = docker_config(tmp_path, port=free_port(), host="127.0.0.1")
    subprocess.run([sys.executable, "-m", "gateway.cli", "init-secret",
                    str(tmp_path / "data" / "secret.key")],
                   cwd=tmp_path, env=plain_env(), check=True, capture_output=True,
                   timeout=RUN_TIMEOUT)
    port = load_settings(config).gateway.port
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                                str(config)], cwd=tmp_path, env=plain_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_echo(port):
            assert process.poll() is None, "the gateway exited at start-up"
            assert time.monotonic() < deadline, "the gateway did not listen in time"
            time.sleep(0.1)
        yield config, process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    return int(process.returncode)


def test_the_health_check_echoes_the_gateway_and_fails_once_it_stops(running_gateway, tmp_path):
    config, process = running_gateway

    healthy = run_healthcheck(config, tmp_path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("healthy: DICOM_GW at 127.0.0.1:")

    # The gateway refuses a called AE title that is not its own: no association, exit 1.
    wrong = tmp_path / "wrong-ae.toml"
    wrong.write_text(config.read_text().replace('ae_title = "DICOM_GW"', 'ae_title = "NOT_GW"'))
    rejected = run_healthcheck(wrong, tmp_path)
    assert rejected.returncode == 1
    assert "no association" in rejected.stdout

    # A calling AE title the config does not admit is named, with the line to add.
    refused = run_healthcheck(config, tmp_path, DICOM_GATEWAY_HEALTHCHECK_AE="PROBE")
    assert refused.returncode == 1
    assert '"PROBE@127.0.0.1"' in refused.stdout

    assert stop(process) == 0
    started = time.monotonic()
    down = run_healthcheck(config, tmp_path)
    assert down.returncode == 1
    assert down.stdout.startswith("unhealthy: ")
    assert time.monotonic() - started < 20.0


def test_the_health_check_calls_a_wildcard_listener_over_loopback(tmp_path):
    spec = importlib.util.spec_from_file_location("docker_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret.key").write_text(OTHER_SECRET)
    for host, expected in (("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("10.1.2.3", "10.1.2.3")):
        settings = load_settings(docker_config(tmp_path, host=host))
        assert module.loopback_address(settings) == expected


def test_the_health_check_fails_on_a_config_it_cannot_load(tmp_path):
    result = run_healthcheck(tmp_path / "absent.toml", tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: config: --config: cannot read")


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def test_the_dockerfile_runs_unprivileged_with_a_volume_a_port_and_a_health_check():
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM"):]
    args: dict[str, str] = {}
    for word, rest in final:
        args[word] = f"{args[word]}\n{rest}" if word in args else rest
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text

    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert f'"{IMAGE_DATA}"' in args["VOLUME"] or args["VOLUME"] == IMAGE_DATA
    assert f"install -d -m 0700 -o gateway -g gateway {IMAGE_DATA}" in args["RUN"]
    assert "--uid 10001" in args["RUN"] and users[-1] == "10001:10001"
    assert args["EXPOSE"].split() == ["11112"]
    assert "PYTHONUNBUFFERED=1" in args["ENV"]
    assert "--no-cache-dir" in text

    copies = {rest.split()[-1]: rest.split()[-2] for word, rest in final if word == "COPY"}
    assert copies[IMAGE_CONFIG] == "docker/gateway.toml"
    assert copies["/usr/local/bin/docker-entrypoint.sh"] == "docker/entrypoint.sh"
    healthcheck_path = "/usr/local/lib/dicom-gateway/healthcheck.py"
    assert copies[healthcheck_path] == "docker/healthcheck.py"
    assert healthcheck_path in args["HEALTHCHECK"] and "CMD" in args["HEALTHCHECK"]
    assert json.loads(args["ENTRYPOINT"]) == ["/usr/local/bin/docker-entrypoint.sh"]
    assert json.loads(args["CMD"]) == ["serve", "--config", IMAGE_CONFIG]


def test_the_build_context_sends_what_the_dockerfile_copies_and_no_state():
    """docker/Dockerfile.dockerignore lets through every COPY source and nothing like var/."""
    lines = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: everything is excluded first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [part for part in rest.split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source} is not in the build context"
            assert (ROOT / source).exists(), source
    assert not any(name.startswith(("var", ".venv", ".git")) for name in allowed)


# --- compose.yaml ---------------------------------------------------------------------------------


def test_the_compose_demo_wires_pacs_gateway_and_research():
    yaml = pytest.importorskip("yaml", reason="PyYAML reads compose.yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"pacs", "gateway", "research"}

    gateway = services["gateway"]
    context = (DOCKER / gateway["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / gateway["build"]["dockerfile"]) == DOCKER / "Dockerfile"
    test = gateway["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1].endswith("/healthcheck.py")
    assert test[-1] in (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert gateway["depends_on"] == {"research": {"condition": "service_healthy"}}
    assert "healthcheck" in services["research"]  # service_healthy needs one
    assert f"gateway-data:{IMAGE_DATA}" in gateway["volumes"]
    assert "gateway-data" in compose["volumes"]
    assert "ports" not in gateway  # DICOM stays inside the compose network

    for name, config, published in (("pacs", "orthanc-pacs.json", "127.0.0.1:8042:8042"),
                                    ("research", "orthanc-research.json", "127.0.0.1:8043:8042")):
        service = services[name]
        assert service["ports"] == [published]
        mount = f"./{config}:/etc/orthanc/orthanc.json:ro"
        assert mount in service["volumes"] and (DOCKER / config).is_file()


# --- systemd ------------------------------------------------------------------------------------


def unit_copy(tmp_path: Path) -> Path:
    """The unit under its own name, ExecStart's program swapped for one that exists here."""
    true = shutil.which("true") or "/bin/true"
    text = UNIT.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={true}", text)
    assert count == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    return copy


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("needs systemd-analyze")
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if "Failed to initialize manager" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()[:200]}")
    return result


def test_the_systemd_unit_verifies(tmp_path):
    result = systemd_analyze("verify", str(unit_copy(tmp_path)))
    ignorable = re.compile(r"is not executable: No such file|[Uu]ser .*(not found|does not exist)")
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.strip() and not ignorable.search(line)]
    assert complaints == []
    assert result.returncode == 0


def test_the_systemd_unit_keeps_its_sandbox(tmp_path):
    """Overall exposure of `systemd-analyze security` at most 2.0 ("OK") on the 10-point scale."""
    result = systemd_analyze("security", "--offline=true", "--threshold=20", "--no-pager",
                             str(unit_copy(tmp_path)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_the_systemd_unit_runs_the_gateway_as_its_own_user_from_its_state_directory():
    settings = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["ExecStart"] == [
        "/opt/dicom-gateway/venv/bin/dicom-gateway serve --config /etc/dicom-gateway/gateway.toml"]
    assert settings["User"] == settings["Group"] == ["dicom-gateway"]
    assert settings["StateDirectory"] == ["dicom-gateway"]
    assert settings["StateDirectoryMode"] == ["0700"]
    assert settings["WorkingDirectory"] == ["/var/lib/dicom-gateway"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["UMask"] == ["0077"]
    example = tomllib.loads((ROOT / "systemd" / "gateway.toml").read_text(encoding="utf-8"))
    assert example["gateway"]["data_dir"] == "/var/lib/dicom-gateway"
    assert example["gateway"]["secret_file"].startswith("/var/lib/dicom-gateway/")
