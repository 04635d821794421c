"""Where the gateway's CPU goes per instance: storescu -> gateway -> storescp on the bench's CT
study, with py-spy sampling both gateway processes (serve, and the forwarding process).

Prints, per process, user and system CPU microseconds per instance (from /proc) and a table of
stages: their share of the samples, and that share of the process's CPU per instance (of its
user time only with ``--gil``). Without ``--gil`` py-spy also counts threads blocked in some
system calls (socket reads with a timeout, fsync) as running: read those stages as time, not
CPU. Writes py-spy's collapsed
stacks beside the JSON for a closer look (e.g. flamegraph.pl). Not a test; needs py-spy
(``.venv/bin/pip install py-spy``) and dcmtk. Run::

    .venv/bin/python bench/profile.py --count 2000 --parallel 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import run as bench  # bench/run.py, beside this script

# (stage, frame substrings); a sample goes to the first stage whose pattern is in its stack,
# looked up from the innermost frame outwards. Order matters only within one frame.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("spool write (writev)", ("write_all",)),  # write_pieces: by its caller (socket or file)
    ("spool file sync (fsync/fdatasync)", ("write_file (gateway/files.py",)),
    ("rename + folder fsync", ("_publish (gateway/spool.py",)),
    ("map commit (state)", ("gateway/state.py",)),
    ("mmap/open spool file (forward)", ("dataset (gateway/spool.py",)),
    ("PDU send to archive", ("_write_dataset", "_write (gateway/net/requestor.py")),
    ("archive response wait/parse", ("_response_status", "_read_command")),
    ("PDU receive: copy into data set", ("append_to",)),
    ("PDU receive: socket reads and waits", ("_fill", "recv_into")),
    ("de-identification engine", ("gateway/deid/",)),
    ("logging", ("gateway/logs.py", "structlog")),
    ("metrics", ("prometheus_client",)),
    ("serve <-> forward messages", ("multiprocessing/connection.py",)),
    ("forward bookkeeping", ("gateway/forward.py",)),
    ("receive bookkeeping", ("gateway/receive.py", "gateway/spool.py")),
    ("upper layer (other)", ("gateway/net/",)),
)


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(p in frame for p in patterns):
                return stage
    return "other"


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def name_of(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return "forward" if b"gateway.forward_process" in cmdline else "serve"


def profile(workdir: Path, count: int, parallel: int, rate: int, out: Path, gil: bool
            ) -> dict[str, object]:
    paths = bench.make_study(workdir / "study", count)
    shares = bench.split(paths, parallel, workdir / "send")
    archive_dir = workdir / "archive"
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    with bench.storescp(archive_dir) as archive_port, \
            bench.gateway(workdir / "gateway", archive_port) as gw:
        # warm up: one association's worth, so both processes are past their first imports
        warm = bench.make_study(workdir / "warm", 50)  # UIDs of their own: 50 more arrivals
        bench.send_with_storescu(gw.port, "DICOM_GW", [warm[0].parent])
        bench.wait_until(lambda: len(os.listdir(archive_dir)) >= 50, 60)
        pids = bench.process_tree(gw.pid)
        pids = [p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes().find(b"gateway") >= 0]
        names = {p: name_of(p) for p in pids}
        before = {p: proc_cpu(p) for p in pids}
        spies = {p: subprocess.Popen([spy, "record", "--pid", str(p), "--rate", str(rate),
                                      "--format", "raw", "--nonblocking", *(["--gil"] if gil else []),
                                      "--output",
                                      str(out / f"{names[p]}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for p in pids}
        time.sleep(1.0)  # py-spy attached
        started = time.monotonic()
        bench.send_with_storescu(gw.port, "DICOM_GW", shares)
        bench.wait_until(lambda: len(os.listdir(archive_dir)) >= count + 50, bench.WAIT)
        elapsed = time.monotonic() - started
        after = {p: proc_cpu(p) for p in pids}
        for proc in spies.values():
            proc.send_signal(signal.SIGINT)
        for proc in spies.values():
            proc.wait(timeout=60)
    report: dict[str, object] = {"count": count, "parallel": parallel,
                                 "per_s": round(count / elapsed, 1), "processes": {}}
    for p in pids:
        name = names[p]
        user = (after[p][0] - before[p][0]) * 1e6 / count
        system = (after[p][1] - before[p][1]) * 1e6 / count
        # with --gil the samples are Python's own work: they share out user time only
        stages = stage_table(out / f"{name}.txt", user if gil else user + system)
        report["processes"][name] = {  # type: ignore[index]
            "user_us": round(user), "system_us": round(system), "stages": stages}
    return report


def stage_table(collapsed: Path, cpu_us: float) -> list[dict[str, object]]:
    """Samples per stage; the process's measured CPU per instance shared out by sample count."""
    counts: Counter[str] = Counter()
    if collapsed.exists():
        for line in collapsed.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if stack and number.isdigit():
                counts[stage_of(stack)] += int(number)
    total = sum(counts.values()) or 1
    return [{"stage": stage, "share": round(n / total, 3), "us": round(cpu_us * n / total)}
            for stage, n in counts.most_common()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (Python's own work; leaves"
                             " out system calls, where threads run without it)")
    parser.add_argument("--out", default=str(bench.ROOT / "bench" / "results" / "profile"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dgw-profile-"))
    try:
        report = profile(workdir, args.count, args.parallel, args.rate, out, args.gil)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{report['count']} instances over {report['parallel']} association(s): "
          f"{report['per_s']} instances/s (profiled)")
    for name, proc in report["processes"].items():  # type: ignore[attr-defined]
        print(f"\n{name}: {proc['user_us']} us user + {proc['system_us']} us system per instance")
        for row in proc["stages"]:
            print(f"  {row['stage']:<36} {row['share'] * 100:5.1f} %  {row['us']:6d} us")
    (out / "profile.json").write_text(json.dumps(report, indent=2))
    print(f"\ncollapsed stacks and JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
