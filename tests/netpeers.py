"""Real network peers for the serve integration tests: dcmtk storescp as the archive, the
gateway as a subprocess (``python -m gateway.cli serve``), dcmtk storescu/echoscu as senders,
and a small generator of test studies.

Every wait is bounded, every process started here is stopped by its ``stop``/``close`` (the
fixtures call them in teardown), and everything listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

LOOPBACK = "127.0.0.1"
GATEWAY_AE = "DICOM_GW"
ARCHIVE_AE = "ARCHIVE"
SENDER_AE = "MODALITY"
SECRET_HEX = "5e" * 32  # fixed, so runs are reproducible; tests only
START_TIMEOUT = 30.0  # gateway or archive up and answering C-ECHO
STOP_TIMEOUT = 30.0  # SIGTERM to exit (the gateway's own shutdown bound is 20 s)
CLI_TIMEOUT = 60.0  # one status/quarantine command
SEND_TIMEOUT = 120.0  # one storescu run

SUCCESS_LINE = "Received Store Response (Success)"

# dcmtk as packaged leaves Nagle's algorithm on unless TCP_NODELAY is set in the environment;
# with it on, every small C-STORE (response) waits ~40 ms for a delayed ACK on loopback.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

requires_dcmtk = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("storescp", "storescu", "echoscu")),
    reason="needs dcmtk storescp, storescu and echoscu",
)


# --- small helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on the loopback interface nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def eventually(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> bool:
    """Whether ``predicate`` becomes true within ``timeout`` (for tests that assert on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def _stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> int | None:
    """Signal ``process`` and wait; SIGKILL it if it does not exit. Returns the first exit code
    seen after ``sig`` (None if it had to be killed)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return None


def echo(port: int, called: str, calling: str = SENDER_AE, timeout: int = 5) -> bool:
    """C-ECHO with dcmtk echoscu; True on success."""
    try:
        result = subprocess.run(
            ["echoscu", "-to", str(timeout), "-ta", str(timeout), "-td", str(timeout),
             "-aet", calling, "-aec", called, LOOPBACK, str(port)],
            capture_output=True, timeout=timeout * 3, env=DCMTK_ENV,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=workdir, capture_output=True,
        text=True, timeout=CLI_TIMEOUT,
    )


# --- the archive: dcmtk storescp -----------------------------------------------------------------


@dataclass
class Archive:
    """``storescp`` writing what it receives into ``folder``, one file per C-STORE received
    (``+uf``: unique file names, so an instance received twice shows up twice)."""

    folder: Path
    port: int
    accept_all: bool = True  # +xa: compressed transfer syntaxes too; otherwise uncompressed only
    ae_title: str = ARCHIVE_AE
    options: tuple[str, ...] = ()  # more storescp options (e.g. --fork for several associations)
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Archive:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = self.folder.parent / f"storescp-{self.port}.log"
        args = ["storescp", "-v", "+uf", *self.options, "-aet", self.ae_title, "-od",
                str(self.folder)]
        if self.accept_all:
            args.insert(1, "+xa")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*args, str(self.port)], stdout=log,
                                            stderr=subprocess.STDOUT, env=DCMTK_ENV)
        wait_for(lambda: self._alive() and echo(self.port, self.ae_title, GATEWAY_AE),
                 START_TIMEOUT, f"storescp on port {self.port}")
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"storescp exited with {self.process.returncode}: {self.log_text()}")
        return True

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, signal.SIGTERM, 10)
            self.process = None

    def files(self) -> list[Path]:
        """Whole files only: storescp writes to the final name, so read them after status says
        the gateway has everything acknowledged."""
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def datasets(self) -> list[Dataset]:
        return [pydicom.dcmread(p) for p in self.files()]


# --- the gateway: a real ``serve`` subprocess ----------------------------------------------------


@dataclass
class DestinationSpec:
    name: str
    port: int
    ae_title: str = ARCHIVE_AE
    extra: str = ""  # more TOML lines for this [[destinations]] block


def gateway_config(
    port: int,
    destinations: Sequence[DestinationSpec],
    gateway_extra: str = "",
    forward_extra: str = "",
) -> str:
    """A gateway config with fast retries, for a test's working directory."""
    blocks = "".join(
        f'\n[[destinations]]\nname = "{d.name}"\nae_title = "{d.ae_title}"\n'
        f'host = "{LOOPBACK}"\nport = {d.port}\n{d.extra}\n'
        for d in destinations
    )
    return (
        f'[gateway]\nae_title = "{GATEWAY_AE}"\nhost = "{LOOPBACK}"\nport = {port}\n'
        f'data_dir = "var"\nsecret_file = "secret.key"\n{gateway_extra}\n'
        f"{blocks}\n"
        "[forward]\nidle_release_seconds = 1\nretry_initial_seconds = 0.2\n"
        f"retry_max_seconds = 1\nrescan_seconds = 2\n{forward_extra}\n"
    )


@dataclass
class GatewayProcess:
    """``python -m gateway.cli serve`` in ``workdir`` (relative paths in the config are taken
    from there); its standard output and error go to files in ``workdir``."""

    workdir: Path
    port: int
    config: str
    calling: str = SENDER_AE  # the AE title used for readiness C-ECHOs
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exit_codes: list[int | None] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.workdir / "gateway.toml"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "gateway.err"

    def start(self) -> GatewayProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        secret = self.workdir / "secret.key"
        if not secret.exists():
            secret.write_text(SECRET_HEX + "\n")
            secret.chmod(0o600)
        self.starts += 1
        with (self.workdir / "gateway.out").open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path)],
                cwd=self.workdir, stdout=out, stderr=err,
            )
        wait_for(lambda: self._alive() and echo(self.port, GATEWAY_AE, self.calling),
                 START_TIMEOUT, f"the gateway to answer C-ECHO on port {self.port}")
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"the gateway exited with {self.process.returncode}:\n{self.stderr()}")
        return True

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM; the exit code (None if it had to be SIGKILLed after STOP_TIMEOUT)."""
        if self.process is None:
            return None
        code = _stop_process(self.process, signal.SIGTERM, STOP_TIMEOUT)
        self.process = None
        self.exit_codes.append(code)
        return code

    def kill(self) -> int | None:
        """SIGKILL: the crash case."""
        if self.process is None:
            return None
        self.process.kill()
        code = self.process.wait(timeout=10)
        self.process = None
        self.exit_codes.append(code)
        return code

    def answers_echo(self) -> bool:
        return echo(self.port, GATEWAY_AE, self.calling)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.workdir, *args, "--config", str(self.config_path))

    def status_sections(self) -> dict[str, Any]:
        """``status --json`` as it is: {"schema", "node", "cluster"} (exit status 3 when the
        database is unreachable)."""
        result = self.cli("status", "--json")
        assert result.returncode in (0, 3), result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def status(self) -> dict[str, Any]:
        """The numbers most tests look at, in one level: the cluster's totals, this node's
        pending work, and per destination both."""
        report = self.status_sections()
        node, cluster = report["node"], report["cluster"]
        destinations = {name: {**cluster["destinations"][name], **pending}
                        for name, pending in node["destinations"].items()}
        return {**cluster, "pending": node["pending"], "destinations": destinations, "node": node}

    def quarantine(self) -> list[dict[str, Any]]:
        result = self.cli("quarantine", "list", "--json")
        assert result.returncode == 0, result.stderr
        records: list[dict[str, Any]] = json.loads(result.stdout)
        return records

    def wait_status(
        self, timeout: float, what: str, predicate: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """Poll ``status --json`` until ``predicate(report)``; the report."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.status()
            return predicate(last)

        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last status "
                            f"{json.dumps(last)}\ngateway stderr:\n{self.stderr()[-3000:]}")
            time.sleep(0.3)
        return last

    def wait_forwarded(self, count: int, timeout: float = 60.0) -> dict[str, Any]:
        """Until nothing is pending and ``forwarded`` (all destinations) reached ``count``."""
        return self.wait_status(
            timeout, f"pending 0 and forwarded {count}",
            lambda r: r["pending"] == 0 and r["forwarded"] >= count,
        )

    def pseudonym_of(self, original: str) -> str:
        """The pseudonym the map holds for ``original`` (``map lookup``)."""
        result = self.cli("map", "lookup", original)
        assert result.returncode == 0, result.stderr
        found = {line.split("\t")[2] for line in result.stdout.splitlines()
                 if line.split("\t")[1] == original}
        assert len(found) == 1, result.stdout
        return found.pop()


# --- the sender: dcmtk storescu ------------------------------------------------------------------

COMPRESSED_FLAGS = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.57": "-xs",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless only
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
}


def storescu_args(port: int, files: Iterable[Path], calling: str = SENDER_AE,
                  extra: Sequence[str] = ()) -> list[str]:
    """One storescu association for ``files``. storescu proposes one compressed syntax per
    run (plus the uncompressed ones), so the files may use at most one compressed syntax."""
    files = list(files)
    flags = {COMPRESSED_FLAGS[ts] for ts in (transfer_syntax(f) for f in files)
             if ts in COMPRESSED_FLAGS}
    assert len(flags) <= 1, f"one storescu run can send one compressed syntax, not {flags}"
    return ["storescu", "-v", "-R", "-nh", *flags, *extra, "-to", "10", "-ta", "10", "-td", "30",
            "-aet", calling, "-aec", GATEWAY_AE, LOOPBACK, str(port), *map(str, files)]


@dataclass
class Sent:
    returncode: int
    output: str
    files: list[Path]

    def acknowledged(self) -> list[Path]:
        """Files storescu got a success response for (from its -v log)."""
        return acknowledged(self.output)


def acknowledged(output: str) -> list[Path]:
    done: list[Path] = []
    current: Path | None = None
    for line in output.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = Path(m.group(1).strip())
        elif SUCCESS_LINE in line and current is not None:
            done.append(current)
            current = None
    return done


def storescu(port: int, files: Iterable[Path], calling: str = SENDER_AE,
             extra: Sequence[str] = (), timeout: float = SEND_TIMEOUT) -> Sent:
    files = list(files)
    result = subprocess.run(storescu_args(port, files, calling, extra), capture_output=True,
                            text=True, timeout=timeout, env=DCMTK_ENV)
    return Sent(result.returncode, result.stdout + result.stderr, files)


class StorescuRun:
    """A storescu running in the background (for parallel sends); its log goes to a file."""

    def __init__(self, port: int, files: Iterable[Path], log: Path, calling: str = SENDER_AE,
                 extra: Sequence[str] = ()) -> None:
        self.files = list(files)
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(storescu_args(port, self.files, calling, extra),
                                            stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = SEND_TIMEOUT) -> Sent:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"storescu did not finish within {timeout:.0f} s:\n{self.output()}")
        return Sent(code, self.output(), self.files)

    def stop(self) -> None:
        _stop_process(self.process, signal.SIGTERM, 10)


def store_file_as_is(port: int, path: Path, calling: str = SENDER_AE) -> int | None:
    """C-STORE ``path`` with pynetdicom, its data set sent byte for byte as the file holds it
    (the SOP Class/Instance UIDs of the request come from the file meta). For files storescu
    will not send, such as a data set without SOP Instance UID. The response status, or None."""
    from pynetdicom import AE, _config, build_context

    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    context = build_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(LOOPBACK, port, contexts=[context], ae_title=GATEWAY_AE)
        assert assoc.is_established, "the gateway did not accept the association"
        try:
            response = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    status = getattr(response, "Status", None)
    return None if status is None else int(status)


# --- test studies --------------------------------------------------------------------------------


def transfer_syntax(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@dataclass(frozen=True)
class Instance:
    path: Path
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str


@dataclass
class Study:
    instances: list[Instance]

    def by_series(self) -> dict[str, list[Instance]]:
        out: dict[str, list[Instance]] = {}
        for i in self.instances:
            out.setdefault(i.series_uid, []).append(i)
        return out

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]


def pydicom_file(name: str) -> Path:
    """A file from pydicom's test data (or pydicom-data)."""
    found = get_testdata_file(name)
    assert isinstance(found, str), f"no pydicom test file {name}"
    return Path(found)


def ct_template(tiny: bool = False) -> Dataset:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    if tiny:  # a 4x4 image: hundreds of instances stay fast
        ds.Rows = ds.Columns = 4
        ds.PixelData = bytes(4 * 4 * 2)
    return ds


def write_study(
    folder: Path,
    patient_id: str,
    patient_name: str,
    series: int,
    per_series: int,
    tiny: bool = False,
    study_uid: str | None = None,
) -> Study:
    """``series`` x ``per_series`` CT instances of one new study of one patient."""
    folder.mkdir(parents=True, exist_ok=True)
    template = ct_template(tiny)
    study_uid = study_uid or generate_uid()
    instances = []
    for _ in range(series):
        series_uid = generate_uid()
        for k in range(per_series):
            instances.append(write_instance(folder, template, patient_id, patient_name,
                                            study_uid, series_uid, number=k + 1))
    return Study(instances)


def write_instance(folder: Path, template: Dataset, patient_id: str, patient_name: str,
                   study_uid: str, series_uid: str, number: int = 1) -> Instance:
    folder.mkdir(parents=True, exist_ok=True)
    ds = template.copy()
    sop_uid = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    path = folder / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Instance(path, patient_id, patient_name, study_uid, series_uid, sop_uid)


def write_compressed(folder: Path, name: str = "JPEG2000.dcm") -> Instance:
    """pydicom's JPEG 2000 test file with a fresh SOP Instance UID (its own patient and study)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Instance(path, str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def chunks(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Round-robin ``items`` into ``n`` lists (so each series spans every association)."""
    return [list(items[i::n]) for i in range(n)]


# --- one test's peers ----------------------------------------------------------------------------


class Peers:
    """Starts archives, gateways and background senders for one test; ``close`` stops every
    one of them (the test modules' ``peers`` fixture calls it in teardown)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.archives: list[Archive] = []
        self.gateways: list[GatewayProcess] = []
        self.senders: list[StorescuRun] = []

    def archive(self, name: str = "archive", accept_all: bool = True,
                port: int | None = None, start: bool = True,
                options: tuple[str, ...] = ()) -> Archive:
        archive = Archive(self.tmp / name, port or free_port(), accept_all=accept_all,
                          options=options)
        self.archives.append(archive)
        return archive.start() if start else archive

    def gateway(self, destinations: Sequence[DestinationSpec], gateway_extra: str = "",
                forward_extra: str = "", calling: str = SENDER_AE,
                start: bool = True, name: str = "gw") -> GatewayProcess:
        """A gateway in its own folder ``name`` (several nodes: several names)."""
        port = free_port()
        config = gateway_config(port, destinations, gateway_extra, forward_extra)
        gateway = GatewayProcess(self.tmp / name, port, config, calling=calling)
        self.gateways.append(gateway)
        return gateway.start() if start else gateway

    def send_in_background(self, port: int, files: Iterable[Path], log_name: str,
                           calling: str = SENDER_AE) -> StorescuRun:
        run = StorescuRun(port, files, self.tmp / log_name, calling)
        self.senders.append(run)
        return run

    def close(self) -> None:
        for sender in self.senders:
            sender.stop()
        for gateway in self.gateways:
            gateway.stop()
        for archive in self.archives:
            archive.stop()


# --- raw peers: what no well-behaved tool sends (tests of the acceptor's hardening) ---------------

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"


def raw_associate_rq(
    called: str = GATEWAY_AE,
    calling: str = "RAW",
    contexts: Sequence[tuple[int, str, Sequence[str]]] = (),
    protocol_version: int = 1,
    application_context: str = APPLICATION_CONTEXT_NAME,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU: ``contexts`` as (ID, abstract syntax, transfer syntaxes)."""
    def item(kind: int, value: bytes) -> bytes:
        return kind.to_bytes(1, "big") + b"\x00" + len(value).to_bytes(2, "big") + value

    body = (protocol_version.to_bytes(2, "big") + b"\x00\x00" + called.encode().ljust(16)
            + calling.encode().ljust(16) + bytes(32)
            + item(0x10, application_context.encode())
            + b"".join(item(0x20, bytes((cid, 0, 0, 0)) + item(0x30, abstract.encode())
                            + b"".join(item(0x40, ts.encode()) for ts in syntaxes))
                       for cid, abstract, syntaxes in contexts)
            + item(0x50, item(0x51, max_pdu.to_bytes(4, "big"))))
    return b"\x01\x00" + len(body).to_bytes(4, "big") + body


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed in the middle of a PDU"
        data += chunk
    return data


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One whole PDU: its type and variable field."""
    header = recv_exactly(sock, 6)
    return header[0], recv_exactly(sock, int.from_bytes(header[2:6], "big"))


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closed); a
    TimeoutError if it does not close within ``timeout`` of its last byte."""
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's memory from /proc/PID/status, KiB: resident now (VmRSS) or at its peak
    (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def raise_open_files_limit(wanted: int) -> None:
    """The soft limit on open files up to ``wanted`` (within the hard limit); skip the test
    when the hard limit is lower."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- a pynetdicom archive that misbehaves on purpose (tests of the forwarder) ---------------------

ABORT = "abort"  # what a PynetdicomArchive's ``decide`` returns to abort the association


@dataclass
class PynetdicomArchive:
    """A pynetdicom storage SCP as the archive: it takes ``sop_classes`` in ``transfer_syntaxes``
    and, for each C-STORE, does what ``decide(dataset)`` says: None stores it (0x0000), a
    number answers that status, ABORT aborts the association. Records what it stored and how
    many C-STOREs it saw. ``stop`` shuts it down."""

    sop_classes: Sequence[str]
    transfer_syntaxes: Sequence[str]
    decide: Callable[[Dataset], int | str | None] = lambda _ds: None
    port: int = 0
    stored: list[Dataset] = field(default_factory=list)
    attempts: int = 0
    server: Any = None

    def start(self) -> PynetdicomArchive:
        from pynetdicom import AE, evt

        ae = AE(ae_title=ARCHIVE_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class, list(self.transfer_syntaxes))
        self.port = self.port or free_port()
        self.server = ae.start_server((LOOPBACK, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event: Any) -> int:
        self.attempts += 1
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        decision = self.decide(dataset)
        if decision == ABORT:
            event.assoc.abort()
            return 0xC000  # not sent: the association is gone
        if decision is None:
            self.stored.append(dataset)
            return 0x0000
        return int(decision)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
