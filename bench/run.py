"""End-to-end benchmark: dcmtk storescu -> storescp directly (the limit) against
storescu -> dicom-gateway -> storescp, on the same generated CT study, in one run; latency at a
low rate; the gateway's peak RSS and CPU per instance; offline anonymize against the open
tools dicognito and dcmanon on a mixed folder.

Not a test: prints a table and writes JSON (bench/results/latest.json). Run with `make bench`.
Loopback only; every process it starts is stopped; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pgload  # bench/pgload.py, beside this script
import pixels as pixel_bench  # bench/pixels.py, beside this script
import pydicom
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.association import Association

from gateway.deid.elements import read_encoded
from gateway.deid.engine import SOP_CLASS_UID, SOP_INSTANCE_UID, Policy, deidentify_encoded
from gateway.deid.profile import build_profile
from gateway.errors import GatewayError

ROOT = Path(__file__).resolve().parents[1]
ROWS = COLUMNS = 512
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk keeps Nagle on unless told


def dcmtk(tool: str) -> str:
    """dcmtk's ``tool`` from PATH, skipping this virtual environment's bin folder: pynetdicom
    installs Python scripts named storescu and storescp there, which take other options."""
    venv_bin = Path(sys.executable).parent.resolve()
    folders = [f for f in os.environ.get("PATH", "").split(os.pathsep)
               if f and Path(f).resolve() != venv_bin]
    return shutil.which(tool, path=os.pathsep.join(folders)) or tool

WAIT = 600.0
OPEN_TOOLS = ("dicognito", "dcmanon")  # compared with offline `anonymize`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def guard_reactor(assoc: Association) -> None:
    """Work around pynetdicom 3.0.4's race between send_c_store() and the reactor thread (the
    latency run's sender is pynetdicom): the reactor polls the DIMSE queue without blocking
    and can take the C-STORE response meant for the sender, which then waits out the DIMSE
    timeout. A pure SCU association expects no requests from the peer, so the reactor's
    non-blocking polls are answered with "nothing"; only the sender's blocking reads see
    responses."""
    dimse = assoc.dimse
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[None, None] | tuple[int | None, object]:
        if not block:
            return None, None
        return blocking_get(block=True)

    dimse.get_msg = get_msg  # type: ignore[method-assign,assignment]


# --- data ----------------------------------------------------------------------------------------


def make_study(folder: Path, count: int) -> list[Path]:
    """``count`` CT instances of 512x512 16-bit (0.5 MB), one patient, one study, one series."""
    folder.mkdir(parents=True, exist_ok=True)
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str), "pydicom's test file CT_small.dcm is missing"
    template = pydicom.dcmread(source)
    template.Rows, template.Columns = ROWS, COLUMNS
    template.PatientName, template.PatientID = "Benchmark^Patient", "BENCH-0001"
    template.StudyInstanceUID, template.SeriesInstanceUID = generate_uid(), generate_uid()
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = random.Random(7).randbytes(ROWS * COLUMNS * 2)
    template.PixelData = pixels
    paths = []
    for number in range(count):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = number + 1
        path = folder / f"ct{number:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def split(paths: list[Path], parts: int, into: Path) -> list[Path]:
    """Hard-link ``paths`` into ``parts`` folders, one per parallel sender."""
    folders = []
    for index in range(parts):
        folder = into / f"share{index}"
        folder.mkdir(parents=True)
        for path in paths[index::parts]:
            os.link(path, folder / path.name)
        folders.append(folder)
    return folders


# --- peers ---------------------------------------------------------------------------------------


@contextmanager
def process(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@contextmanager
def storescp(out: Path) -> Iterator[int]:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    with process([dcmtk("storescp"), "--fork", "-aet", "ARCHIVE", "-od", str(out), str(port)],
                 env=DCMTK_ENV):
        if not wait_until(lambda: listening(port), 30):
            raise RuntimeError("storescp did not start")
        yield port


@dataclass
class GatewayProcess:
    port: int
    pid: int


SECRET_HEX = "6b" * 32  # every node of a multi-node run shares it, as a real cluster does


def gateway_config(workdir: Path, port: int, archive_port: int, database_url: str = "",
                   extra: str = "") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gateway.toml"
    config.write_text(f"""
[gateway]
port = {port}
data_dir = "{workdir / 'var'}"
secret_file = "{workdir / 'var' / 'secret.key'}"
database_url = "{database_url}"
max_associations = 16
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
port = {archive_port}
{extra}
""")
    secret = workdir / "var" / "secret.key"
    secret.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret.write_text(SECRET_HEX + "\n")
    secret.chmod(0o600)
    return config


@contextmanager
def gateway(workdir: Path, archive_port: int, database_url: str = "",
            extra: str = "") -> Iterator[GatewayProcess]:
    port = free_port()
    config = gateway_config(workdir, port, archive_port, database_url, extra)
    with process([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                 cwd=workdir) as proc:
        if not wait_until(lambda: listening(port), 60):
            raise RuntimeError("the gateway did not start")
        yield GatewayProcess(port, proc.pid)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the gateway forwards from a process of its own)."""
    found, index = [pid], 0
    while index < len(found):
        for task in Path(f"/proc/{found[index]}/task").glob("*/children"):
            with suppress(OSError):
                found.extend(int(child) for child in task.read_text().split())
        index += 1
    return found


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """CPU time of ``pid`` and its descendants (only its own with ``tree=False``)."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int, key: str = "VmHWM") -> int:
    """Memory of ``pid`` and its descendants, added up (their peaks, for VmHWM)."""
    total = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(key + ":"))
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot, from /proc/stat; idle and I/O wait
    count as not busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def busy_since(before: tuple[int, int]) -> float:
    """The share of all cores' time that was busy since ``before`` (0..1)."""
    busy, total = machine_ticks()
    return (busy - before[0]) / max(1, total - before[1])


# --- scenarios -----------------------------------------------------------------------------------


@dataclass
class Throughput:
    path: str
    associations: int
    instances: int
    seconds: float
    megabytes: float
    sender_seconds: float
    peak_rss_mb: float | None = None
    cpu_ms_per_instance: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds


def send_with_storescu(port: int, called: str, shares: list[Path]) -> float:
    """Run one storescu per share folder at once; seconds until all have finished."""
    started = time.monotonic()
    senders = [
        subprocess.Popen([dcmtk("storescu"), "-aec", called, "+sd", "127.0.0.1", str(port),
                          str(folder)], env=DCMTK_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for folder in shares
    ]
    for sender in senders:
        if sender.wait(timeout=WAIT) != 0:
            raise RuntimeError("storescu failed")
    return time.monotonic() - started


def run_throughput(workdir: Path, paths: list[Path], parallel: int, through_gateway: bool,
                   sample: Callable[[int], None] | None = None) -> Throughput:
    run = workdir / f"{'gw' if through_gateway else 'direct'}-{parallel}"
    shares = split(paths, parallel, run / "send")
    archive_dir = run / "archive"
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    with storescp(archive_dir) as archive_port:
        def arrived() -> int:
            return len(os.listdir(archive_dir))

        if not through_gateway:
            ticks, started = machine_ticks(), time.monotonic()
            sent = send_with_storescu(archive_port, "ARCHIVE", shares)
            wait_until(lambda: arrived() >= len(paths), WAIT)
            return Throughput("direct", parallel, arrived(), time.monotonic() - started,
                              megabytes, sent, extra={"machine_busy": busy_since(ticks)})
        with gateway(run / "gateway", archive_port) as gw:
            done = threading.Event()
            if sample is not None:  # e.g. RSS, every half second while the run lasts
                sampler = threading.Thread(target=lambda: _every(0.5, done, lambda: sample(gw.pid)))
                sampler.start()
            cpu_before, ticks = cpu_seconds(gw.pid), machine_ticks()
            started = time.monotonic()
            sent = send_with_storescu(gw.port, "DICOM_GW", shares)
            wait_until(lambda: arrived() >= len(paths), WAIT)
            elapsed = time.monotonic() - started
            done.set()
            cpu = cpu_seconds(gw.pid) - cpu_before
            return Throughput("gateway", parallel, arrived(), elapsed, megabytes, sent,
                              peak_rss_mb=rss_kb(gw.pid) / 1024,
                              cpu_ms_per_instance=cpu * 1000 / len(paths),
                              extra={"machine_busy": busy_since(ticks)})


def _every(seconds: float, done: threading.Event, action: Callable[[], None]) -> None:
    while not done.wait(seconds):
        action()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_latency(workdir: Path, paths: list[Path], through_gateway: bool) -> dict[str, float]:
    """One instance at a time at a low rate: send -> acknowledgement, send -> arrival."""
    times_file = workdir / f"arrivals-{'gw' if through_gateway else 'direct'}.txt"
    times_file.write_text("")
    archive_port = free_port()
    with process([sys.executable, str(ROOT / "bench" / "archive.py"), str(archive_port),
                  str(times_file)], cwd=ROOT):
        if not wait_until(lambda: listening(archive_port), 30):
            raise RuntimeError("the latency archive did not start")
        if through_gateway:
            with gateway(workdir / "latency-gateway", archive_port) as gw:
                return measure_latency(gw.port, "DICOM_GW", paths, times_file)
        return measure_latency(archive_port, "ARCHIVE", paths, times_file)


def times_recorded(times_file: Path, count: int) -> bool:
    return len(times_file.read_text().split()) >= count


def measure_latency(port: int, called: str, paths: list[Path], times_file: Path
                    ) -> dict[str, float]:
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="BENCH")
    ae.maximum_pdu_size = 0
    assoc = ae.associate("127.0.0.1", port, ae_title=called,
                         contexts=[build_context(datasets[0].SOPClassUID, [ExplicitVRLittleEndian])])
    if not assoc.is_established:
        raise RuntimeError("no association for the latency run")
    guard_reactor(assoc)
    acks, arrivals = [], []
    try:
        for index, ds in enumerate(datasets):
            sent = time.time()
            assoc.send_c_store(ds)
            acks.append(time.time() - sent)
            if not wait_until(partial(times_recorded, times_file, index + 1), 30, step=0.0005):
                raise RuntimeError("an instance did not arrive")
            arrivals.append(float(times_file.read_text().split()[index]) - sent)
            time.sleep(0.05)  # a low rate: no queueing, only the path's own delay
    finally:
        assoc.release()
    return {"ack_p50_ms": percentile(acks, 0.5) * 1000, "ack_p99_ms": percentile(acks, 0.99) * 1000,
            "arrival_p50_ms": percentile(arrivals, 0.5) * 1000,
            "arrival_p99_ms": percentile(arrivals, 0.99) * 1000}


ONE_WORKER = "gateway-1"  # anonymize --workers 1


def offline_sources() -> list[Path]:
    """Every pydicom test file that is a good instance: one the gateway de-identifies. The rest
    are broken on purpose (cut short, images stripped of their pixels, no Study UID, a UID of
    hex digits...): the gateway quarantines them, and a folder of good instances lets every
    tool write everything (dicognito also stops at the first file that is not an instance)."""
    policy = Policy(profile=build_profile())
    sources = []
    for path in get_testdata_files():
        try:
            deidentify_encoded(Path(path).read_bytes(), policy, b"bench-secret-0123456789abcdef")
        except (GatewayError, OSError):
            continue
        sources.append(Path(path))
    return sources


def renumbered(data: bytes, number: int) -> bytes | None:
    """``data`` with its SOP Instance UID replaced by one unique to ``number``, of the same
    length, so that no length in the file changes; None when that cannot be done (a UID too
    short, or one inside a deflated data set).

    Copies of one file would otherwise be one instance: every tool names its output by the
    instance's UID, and each copy would overwrite the one before."""
    old = read_encoded(data).text(SOP_INSTANCE_UID)
    digits = len(old) - len("2.25.1")
    if digits < len(str(number)):
        return None
    new = f"2.25.1{number:0{digits}d}"
    result = data.replace(old.encode("ascii"), new.encode("ascii"))
    try:
        return result if read_encoded(result).text(SOP_INSTANCE_UID) == new else None
    except GatewayError:
        return None


def offline_folder(folder: Path, ct_paths: list[Path], copies: int) -> dict[str, int]:
    """A mixed folder: the generated CT instances (hard links) and ``copies`` copies of
    pydicom's test instances of many SOP classes, every file a distinct instance. A source
    whose UID cannot be renumbered is copied once."""
    (folder / "ct").mkdir(parents=True)
    for path in ct_paths:
        os.link(path, folder / "ct" / path.name)
    sources = offline_sources()
    sop_classes = {read_encoded(p.read_bytes()).text(SOP_CLASS_UID) for p in sources}
    count, cycling, first_pass = 0, list(sources), True
    while count < copies and cycling:
        for source in list(cycling):
            data = renumbered(source.read_bytes(), count)
            if data is None:
                cycling.remove(source)
                if not first_pass:
                    continue
                data = source.read_bytes()  # once, as it is
            target = folder / f"set{count // len(sources):03d}" / f"{count:05d}-{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            count += 1
            if count >= copies:
                break
        first_pass = False
    return {"files": len(ct_paths) + count, "ct": len(ct_paths), "test_files": count,
            "test_sources": len(sources), "sop_classes": len(sop_classes - {""})}


def count_files(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


@dataclass
class OfflineRun:
    files_per_s: float | None  # None when the tool stopped before the end (dicognito aborts)
    written: int


def run_offline(workdir: Path, ct_paths: list[Path], copies: int, others: list[str], rounds: int
                ) -> dict[str, object]:
    """The gateway and the open tools in ``others`` on the same mixed folder, ``rounds`` times
    each, alternating which goes first; medians are reported, with the files each run wrote.

    A fresh virtual machine writes its first gigabytes ~10x slower than later ones (the host
    backs guest memory on first touch), so the first tool to write would be penalised: an
    untimed warm-up run goes first, and every output is deleted and the disk synced before the
    next run (no tool pays for writing out another's files). Other work on the machine shows
    in the load averages recorded.
    """
    src = workdir / "offline-in"
    folder = offline_folder(src, ct_paths, copies)
    config = gateway_config(workdir / "offline-gateway", free_port(), free_port())
    out = workdir / "offline-out"

    def run(command: list[str], ok: tuple[int, ...]) -> OfflineRun:
        os.sync()
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, timeout=WAIT)
        elapsed = time.monotonic() - started
        written = count_files(out)
        shutil.rmtree(out, ignore_errors=True)
        return OfflineRun(folder["files"] / elapsed if done.returncode in ok else None, written)

    commands = {
        "gateway": [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config),
                    str(src), str(out)],
        # The open tools use one process: the gateway on one core too, for a like-for-like ratio.
        ONE_WORKER: [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config),
                     "--workers", "1", str(src), str(out)],
        "dicognito": [sys.executable, "-m", "dicognito", "--quiet", "--assume-burned-in-annotation",
                      "never", "--output-directory", str(out), str(src)],
        "dcmanon": [sys.executable, str(ROOT / "bench" / "dcmanon_folder.py"), str(src), str(out)],
    }
    tools = ["gateway", ONE_WORKER, *others]
    # anonymize exits 1 when it quarantined some files (a few of pydicom's are meant to be);
    # the dcmanon loop exits 1 when some files failed, having tried them all.
    success = {"gateway": (0, 1), ONE_WORKER: (0, 1), "dicognito": (0,), "dcmanon": (0, 1)}
    run(commands["gateway"], success["gateway"])  # warm-up
    load_before = os.getloadavg()[0]
    runs: dict[str, list[OfflineRun]] = {name: [] for name in tools}
    for index in range(rounds):
        for name in (tools if index % 2 == 0 else list(reversed(tools))):
            runs[name].append(run(commands[name], success[name]))
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return {**folder, **offline_summary(runs), "load_average_1min": load}


def offline_summary(runs: dict[str, list[OfflineRun]]) -> dict[str, object]:
    """Median files/s per tool, the median of the rounds' gateway/tool ratios, the files each
    run wrote, and the fastest of the open tools (runs that stopped early count for none)."""
    rates = {name: [r.files_per_s for r in tool_runs if r.files_per_s is not None]
             for name, tool_runs in runs.items()}
    medians = {name: round(statistics.median(values), 1) for name, values in rates.items() if values}
    open_tools = [name for name in medians if name not in ("gateway", ONE_WORKER)]
    return {
        "files_per_s": medians,
        "ratios": _ratios(runs, "gateway", open_tools),  # gateway files/s over the tool's
        "ratios_one_worker": _ratios(runs, ONE_WORKER, open_tools),
        "fastest_open_tool": max(open_tools, key=medians.__getitem__) if open_tools else None,
        "rounds": {name: [None if r.files_per_s is None else round(r.files_per_s, 1)
                          for r in tool_runs] for name, tool_runs in runs.items()},
        "written": {name: [r.written for r in tool_runs] for name, tool_runs in runs.items()},
    }


def _ratios(runs: dict[str, list[OfflineRun]], gateway: str, tools: list[str]) -> dict[str, float]:
    """Per tool, the median of the rounds' ``gateway``/tool ratios."""
    ratios = {}
    for name in tools:
        pairs = [(g.files_per_s, t.files_per_s) for g, t in zip(runs[gateway], runs[name], strict=True)
                 if g.files_per_s is not None and t.files_per_s is not None]
        if pairs:
            ratios[name] = round(statistics.median(g / t for g, t in pairs), 2)
    return ratios


def compare_throughput(workdir: Path, paths: list[Path], parallel: int, rounds: int
                       ) -> dict[str, object]:
    """``rounds`` direct and gateway runs, each pair side by side, and their medians.

    This machine's speed drifts between runs (a direct run here has taken 255 to 1176
    instances/s), mostly with how much of its memory the kernel has handed out before: so runs
    alternate which goes first, and the ratio reported is the median of the pairs' ratios."""
    pairs: list[tuple[Throughput, Throughput]] = []
    for index in range(rounds):
        folder = workdir / f"round-{parallel}-{index}"
        order = (False, True) if index % 2 == 0 else (True, False)
        runs = {through: run_throughput(folder, paths, parallel, through_gateway=through)
                for through in order}
        pairs.append((runs[False], runs[True]))
        shutil.rmtree(folder, ignore_errors=True)  # the archives' copies of the study
    directs, gateways = [d for d, _ in pairs], [g for _, g in pairs]
    return {
        "associations": parallel,
        "direct_per_s": round(statistics.median(d.per_second for d in directs), 1),
        "direct_mb_s": round(statistics.median(d.mb_per_second for d in directs), 1),
        "gateway_per_s": round(statistics.median(g.per_second for g in gateways), 1),
        "gateway_mb_s": round(statistics.median(g.mb_per_second for g in gateways), 1),
        "ratio": round(statistics.median(g.per_second / d.per_second for d, g in pairs), 3),
        "rounds": [{"direct_per_s": round(d.per_second, 1), "gateway_per_s": round(g.per_second, 1),
                    "ratio": round(g.per_second / d.per_second, 3)} for d, g in pairs],
        "gateway_sender_done_s": round(statistics.median(g.sender_seconds for g in gateways), 2),
        "gateway_peak_rss_mb": round(max(g.peak_rss_mb or 0 for g in gateways), 1),
        "gateway_cpu_ms_per_instance": round(
            statistics.median(g.cpu_ms_per_instance or 0 for g in gateways), 2),
        "arrived": [[d.instances, g.instances] for d, g in pairs],
        # How much of the machine's cores were busy: near 1, CPU decides the rate; well below,
        # waiting (disk syncs, round trips) does.
        "direct_machine_busy": round(statistics.median(d.extra["machine_busy"] for d in directs), 2),
        "gateway_machine_busy": round(
            statistics.median(g.extra["machine_busy"] for g in gateways), 2),
    }


def run_nodes(workdir: Path, paths: list[Path], parallel: int, database_urls: list[str]) -> float:
    """Instances/s from ``parallel`` senders spread over one gateway node per URL (each with its
    own data folder, all with the same secret) to one archive, until all have arrived."""
    archive_dir = workdir / "archive"
    shares = split(paths, parallel, workdir / "send")
    with storescp(archive_dir) as archive_port, ExitStack() as stack:
        nodes = [stack.enter_context(gateway(workdir / f"node-{i}", archive_port, url))
                 for i, url in enumerate(database_urls)]
        started = time.monotonic()
        senders = [subprocess.Popen([dcmtk("storescu"), "-aec", "DICOM_GW", "+sd", "127.0.0.1",
                                     str(nodes[i % len(nodes)].port), str(folder)], env=DCMTK_ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for i, folder in enumerate(shares)]
        for sender in senders:
            if sender.wait(timeout=WAIT) != 0:
                raise RuntimeError("storescu failed")
        wait_until(lambda: len(os.listdir(archive_dir)) >= len(paths), WAIT)
        return len(os.listdir(archive_dir)) / (time.monotonic() - started)


def compare_nodes(workdir: Path, paths: list[Path], parallel: int, rounds: int) -> dict[str, object]:
    """One node on SQLite, one on PostgreSQL, two on one PostgreSQL: medians of ``rounds``.
    PostgreSQL is started by the tests' fixture class (a throw-away server on loopback)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import PgServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        return {"skipped": "PostgreSQL is not installed"}
    server = PgServer(bindir)
    server.init()
    server.start()
    try:
        setups: dict[str, Callable[[], list[str]]] = {
            "1 node, SQLite": lambda: [""],
            "1 node, PostgreSQL": lambda: [server.new_database()],
            "2 nodes, PostgreSQL": lambda: [server.new_database()] * 2,
        }
        rates: dict[str, list[float]] = {name: [] for name in setups}
        server_loads: list[pgload.Load] = []  # what PostgreSQL did, for the one-node runs
        for index in range(rounds):
            for name, urls in setups.items():
                folder = workdir / f"nodes-{index}-{len(rates[name])}-{name[0]}{len(name)}"
                database_urls = urls()
                pid = server._postmaster_pid()
                before = pgload.load(pid, database_urls[0]) if pid and database_urls[0] else None
                rates[name].append(run_nodes(folder, paths, parallel, database_urls))
                if before is not None and pid is not None and len(database_urls) == 1:
                    time.sleep(1)  # the nodes' backends have exited and been reaped
                    server_loads.append(pgload.load(pid, database_urls[0]) - before)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        server.destroy()
    medians = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    one_pg = medians["1 node, PostgreSQL"]
    return {"associations": parallel, "instances": len(paths), "per_s": medians,
            "rounds": {name: [round(v, 1) for v in values] for name, values in rates.items()},
            "postgresql_vs_sqlite": round(one_pg / medians["1 node, SQLite"], 3),
            "two_nodes_vs_one": round(medians["2 nodes, PostgreSQL"] / one_pg, 3),
            "postgresql_per_instance": per_instance(server_loads, len(paths))}


def per_instance(loads: list[pgload.Load], instances: int) -> dict[str, float]:
    """PostgreSQL's work per instance received (medians over the runs), and the instances per
    second one core of it would carry at that cost."""
    if not loads:
        return {}
    cpu_ms = statistics.median(load.cpu_seconds for load in loads) * 1000 / instances
    return {"cpu_ms": round(cpu_ms, 3),
            "commits": round(statistics.median(load.commits for load in loads) / instances, 3),
            "rows_written": round(statistics.median(load.rows_written for load in loads)
                                  / instances, 2),
            "instances_per_core_s": round(1000 / cpu_ms) if cpu_ms else 0}


# A second archive, with the same profile (one copy, two deliveries) or with a named profile of
# its own (a second de-identification with edits per instance): the difference is the cost of a
# second profile.
SECOND_ARCHIVE = """
[[destinations]]
name = "second"
ae_title = "SECOND"
port = {port}
profile = "{profile}"
"""
TRIAL_PROFILE = """
[profiles.trial]
options = ["retain_patient_characteristics"]
[profiles.trial.edits]
remove = ["StudyDate", "SeriesDate"]
[profiles.trial.edits.set]
ClinicalTrialSponsorName = "Sponsor"
ClinicalTrialSubjectID = "{pseudonym.patient_id}"
ClinicalTrialTimePointID = "{pseudonym.study}"
"""


def run_two_archives(workdir: Path, paths: list[Path], parallel: int, named: bool) -> Throughput:
    """Instances/s until both archives have every instance, and the gateway's CPU per instance."""
    shares = split(paths, parallel, workdir / "send")
    first_dir, second_dir = workdir / "first", workdir / "second"
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    with storescp(first_dir) as first, storescp(second_dir) as second:
        extra = SECOND_ARCHIVE.format(port=second, profile="trial" if named else "default")
        with gateway(workdir / "gateway", first, extra=extra + (TRIAL_PROFILE if named else "")) as gw:
            cpu_before, receiving_before = cpu_seconds(gw.pid), cpu_seconds(gw.pid, tree=False)
            started = time.monotonic()
            sent = send_with_storescu(gw.port, "DICOM_GW", shares)

            def arrived() -> int:
                return min(len(os.listdir(first_dir)), len(os.listdir(second_dir)))

            wait_until(lambda: arrived() >= len(paths), WAIT)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(gw.pid) - cpu_before
            receiving = cpu_seconds(gw.pid, tree=False) - receiving_before
            return Throughput("gateway", parallel, arrived(), elapsed, megabytes, sent,
                              peak_rss_mb=rss_kb(gw.pid) / 1024,
                              cpu_ms_per_instance=cpu * 1000 / len(paths),
                              extra={"receiving_cpu_ms": receiving * 1000 / len(paths)})


def compare_profiles(workdir: Path, paths: list[Path], parallel: int, rounds: int
                     ) -> dict[str, object]:
    """Two archives with one profile against two archives with two profiles (the second with
    edits), alternating which runs first; medians, and the median of the pairs' ratios."""
    pairs: list[tuple[Throughput, Throughput]] = []
    for index in range(rounds):
        order = (False, True) if index % 2 == 0 else (True, False)
        runs = {}
        for named in order:
            folder = workdir / f"profiles-{index}-{int(named)}"
            runs[named] = run_two_archives(folder, paths, parallel, named)
            shutil.rmtree(folder, ignore_errors=True)
        pairs.append((runs[False], runs[True]))
    ones, twos = [o for o, _ in pairs], [t for _, t in pairs]
    return {
        "associations": parallel, "instances": len(paths),
        "one_profile_per_s": round(statistics.median(o.per_second for o in ones), 1),
        "two_profiles_per_s": round(statistics.median(t.per_second for t in twos), 1),
        "ratio": round(statistics.median(t.per_second / o.per_second for o, t in pairs), 3),
        "one_profile_cpu_ms": round(statistics.median(o.cpu_ms_per_instance or 0 for o in ones), 2),
        "two_profiles_cpu_ms": round(statistics.median(t.cpu_ms_per_instance or 0 for t in twos), 2),
        "one_profile_receiving_cpu_ms": round(
            statistics.median(o.extra["receiving_cpu_ms"] for o in ones), 2),
        "two_profiles_receiving_cpu_ms": round(
            statistics.median(t.extra["receiving_cpu_ms"] for t in twos), 2),
        "rounds": [{"one_per_s": round(o.per_second, 1), "two_per_s": round(t.per_second, 1),
                    "one_cpu_ms": round(o.cpu_ms_per_instance or 0, 2),
                    "two_cpu_ms": round(t.cpu_ms_per_instance or 0, 2)} for o, t in pairs],
    }


# --- report --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="instances in the study")
    parser.add_argument("--parallel", type=int, default=4, help="associations in the parallel run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="direct/gateway pairs per association count, and offline rounds of every tool;"
                             " medians are reported")
    parser.add_argument("--latency-count", type=int, default=100)
    parser.add_argument("--offline-copies", type=int, default=3000,
                        help="pydicom test files (many SOP classes) in the offline folder")
    parser.add_argument("--offline-ct", type=int, default=1000,
                        help="CT instances of the study also in the offline folder (at most --count)")
    parser.add_argument("--nodes-count", type=int, default=1000,
                        help="instances of the study sent in the nodes comparison (SQLite, PostgreSQL,"
                             " two nodes)")
    parser.add_argument("--profiles-count", type=int, default=1000,
                        help="instances of the study sent to two archives with one profile, then"
                             " with two")
    parser.add_argument("--soak", type=int, default=0,
                        help="also stream this many instances and sample the gateway's RSS")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["throughput", "latency", "offline", "pixels", "nodes", "profiles",
                                 *OPEN_TOOLS])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(dcmtk(tool)) is None:
            print(f"{tool} is missing: install dcmtk", file=sys.stderr)
            return 2
    report: dict[str, object] = {"count": args.count}
    workdir = Path(tempfile.mkdtemp(prefix="dgw-bench-"))
    try:
        paths = make_study(workdir / "study", args.count)
        if "throughput" not in args.skip:
            report["throughput"] = [compare_throughput(workdir, paths, parallel, args.rounds)
                                    for parallel in (1, args.parallel)]
        if "latency" not in args.skip:
            sample = paths[: args.latency_count]
            direct = run_latency(workdir, sample, through_gateway=False)
            via = run_latency(workdir, sample, through_gateway=True)
            report["latency"] = {"direct": direct, "gateway": via,
                                 "ack_p50_ratio": via["ack_p50_ms"] / direct["ack_p50_ms"]}
        if args.soak:
            soak_paths = make_study(workdir / "soak", args.soak)
            samples: list[int] = []
            result = run_throughput(workdir, soak_paths, 1, through_gateway=True,
                                    sample=lambda pid: samples.append(rss_kb(pid, "VmRSS")))
            fifth = max(1, len(samples) // 5)
            report["soak"] = {
                "instances": result.instances, "per_s": round(result.per_second, 1),
                "rss_mb_first_fifth": round(statistics.mean(samples[:fifth]) / 1024, 1),
                "rss_mb_last_fifth": round(statistics.mean(samples[-fifth:]) / 1024, 1),
                "rss_mb_by_fifth": [round(statistics.mean(samples[i * fifth : (i + 1) * fifth])
                                          / 1024, 1) for i in range(5)],
                "peak_rss_mb": round(result.peak_rss_mb or 0, 1),
            }
        if "profiles" not in args.skip:
            report["profiles"] = compare_profiles(workdir, paths[: args.profiles_count],
                                                  args.parallel, args.rounds)
        if "nodes" not in args.skip:
            report["nodes"] = compare_nodes(workdir, paths[: args.nodes_count], args.parallel,
                                            args.rounds)
        if "offline" not in args.skip:
            others = [tool for tool in OPEN_TOOLS if tool not in args.skip]
            report["offline"] = run_offline(workdir, paths[: args.offline_ct], args.offline_copies,
                                            others, args.rounds)
        if "pixels" not in args.skip:
            report["pixels"] = pixel_bench.measure_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(report)
    if "pixels" in report:
        pixel_bench.print_pixels(report["pixels"])  # type: ignore[arg-type]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


def print_table(report: dict[str, object]) -> None:
    print(f"\nstudy: {report['count']} CT instances, {ROWS}x{COLUMNS} 16-bit")
    for row in report.get("throughput", []):  # type: ignore[attr-defined]
        print(f"\n{row['associations']} association(s)      direct      gateway     ratio"
              f"   (medians of {len(row['rounds'])} rounds)")
        print(f"  instances/s       {row['direct_per_s']:9.1f}   {row['gateway_per_s']:9.1f}"
              f"   {row['ratio']:6.3f}")
        print(f"  MB/s              {row['direct_mb_s']:9.1f}   {row['gateway_mb_s']:9.1f}")
        for index, pair in enumerate(row["rounds"]):
            print(f"  round {index + 1}           {pair['direct_per_s']:9.1f}   "
                  f"{pair['gateway_per_s']:9.1f}   {pair['ratio']:6.3f}")
        print(f"  gateway: peak RSS {row['gateway_peak_rss_mb']} MB, "
              f"{row['gateway_cpu_ms_per_instance']} CPU ms/instance, arrived {row['arrived']}")
        print(f"  cores busy: direct {row['direct_machine_busy']:.0%}, "
              f"gateway {row['gateway_machine_busy']:.0%}")
    latency = report.get("latency")
    if isinstance(latency, dict):
        d, g = latency["direct"], latency["gateway"]
        print("\nlatency (ms)          direct p50/p99     gateway p50/p99")
        print(f"  acknowledgement     {d['ack_p50_ms']:6.1f} / {d['ack_p99_ms']:6.1f}"
              f"    {g['ack_p50_ms']:6.1f} / {g['ack_p99_ms']:6.1f}"
              f"   (p50 ratio {latency['ack_p50_ratio']:.2f})")
        print(f"  arrival             {d['arrival_p50_ms']:6.1f} / {d['arrival_p99_ms']:6.1f}"
              f"    {g['arrival_p50_ms']:6.1f} / {g['arrival_p99_ms']:6.1f}")
    nodes = report.get("nodes")
    if isinstance(nodes, dict) and "per_s" in nodes:
        print(f"\nnodes: {nodes['instances']} instances over {nodes['associations']} senders, "
              f"instances/s (medians of {len(next(iter(nodes['rounds'].values())))} rounds)")
        for name, rate in nodes["per_s"].items():
            print(f"  {name:<22}{rate:9.1f}   rounds {nodes['rounds'][name]}")
        print(f"  PostgreSQL / SQLite {nodes['postgresql_vs_sqlite']:.2f}; two nodes / one "
              f"{nodes['two_nodes_vs_one']:.2f}")
        load = nodes.get("postgresql_per_instance")
        if load:
            print(f"  PostgreSQL per instance: {load['cpu_ms']:.3f} ms CPU, {load['commits']:.3f}"
                  f" commits, {load['rows_written']:.2f} rows written (one core of it: "
                  f"{load['instances_per_core_s']} instances/s)")
    elif isinstance(nodes, dict):
        print(f"\nnodes: {nodes['skipped']}")
    profiles = report.get("profiles")
    if isinstance(profiles, dict):
        print(f"\nprofiles: {profiles['instances']} instances to two archives over "
              f"{profiles['associations']} senders (medians of {len(profiles['rounds'])} rounds)")
        print(f"  one profile         {profiles['one_profile_per_s']:9.1f} instances/s"
              f"   {profiles['one_profile_cpu_ms']:6.2f} CPU ms/instance")
        print(f"  two profiles        {profiles['two_profiles_per_s']:9.1f} instances/s"
              f"   {profiles['two_profiles_cpu_ms']:6.2f} CPU ms/instance   (ratio {profiles['ratio']:.3f})")
        print(f"  receiving process: {profiles['one_profile_receiving_cpu_ms']:.2f} CPU ms/instance "
              f"with one profile, {profiles['two_profiles_receiving_cpu_ms']:.2f} with two")
    if "soak" in report:
        print(f"\nsoak: {report['soak']}")
    offline = report.get("offline")
    if isinstance(offline, dict):
        print_offline(offline)


def print_offline(offline: dict[str, Any]) -> None:
    rounds = len(offline["rounds"]["gateway"])
    print(f"\noffline anonymize: {offline['files']} files ({offline['ct']} CT, {offline['test_files']}"
          f" copies of {offline['test_sources']} pydicom test files of {offline['sop_classes']}"
          f" SOP classes), medians of {rounds} rounds")
    print("  tool          files/s   gateway ratio   1-worker ratio   written")
    for name, written in offline["written"].items():
        rate = offline["files_per_s"].get(name)
        ratio = offline["ratios"].get(name)
        single = offline["ratios_one_worker"].get(name)
        print(f"  {name:<10} {'stopped' if rate is None else f'{rate:.1f}':>10}"
              f"   {'' if ratio is None else f'{ratio:13.2f}':>13}"
              f"   {'' if single is None else f'{single:14.2f}':>14}"
              f"   {written_text(written, offline['files'])}")
        if None in offline["rounds"][name]:
            print(f"    {name} stopped early in {offline['rounds'][name].count(None)} of {rounds} rounds")
    if offline["fastest_open_tool"]:
        print(f"  fastest open tool: {offline['fastest_open_tool']}")
    load = offline["load_average_1min"]
    print(f"  load average (1 min, {os.cpu_count()} cores): {load['before']} before, {load['after']} after")


def written_text(written: list[int], files: int) -> str:
    """"wrote N of M", with the range when the rounds differ."""
    low, high = min(written), max(written)
    return f"wrote {low} of {files}" if low == high else f"wrote {low}-{high} of {files}"


if __name__ == "__main__":
    sys.exit(main())
