"""Store-and-forward under failure, with real peers: the archive is down while modalities send,
and the gateway is killed (SIGKILL) in the middle of an association."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from netpeers import (
    DestinationSpec,
    GatewayProcess,
    Peers,
    acknowledged,
    requires_dcmtk,
    storescu,
    wait_for,
    write_study,
)

pytestmark = requires_dcmtk


def test_archive_down_while_sending_then_everything_arrives(peers: Peers, tmp_path: Path) -> None:
    archive = peers.archive(start=False)  # its port is chosen, nothing listens on it yet
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    study = write_study(tmp_path / "src", "MRN-DOWN-1", "Down^Archive", series=2, per_series=4)
    count = len(study.instances)

    sent = storescu(gateway.port, study.paths)
    assert sent.returncode == 0, sent.output
    assert sorted(sent.acknowledged()) == sorted(study.paths)  # success although archive is down

    # counters may reach the database a moment after the answer; the spool is there at once
    report = gateway.wait_status(10, f"received {count}", lambda r: r["received"] == count)
    assert report["pending"] == count
    assert report["forwarded"] == 0
    assert report["destinations"]["archive"]["pending"] == count
    assert report["destinations"]["archive"]["oldest_pending_age_seconds"] is not None
    time.sleep(1.5)  # let the forwarder fail a few times (retries back off from 0.2 s to 1 s)
    assert gateway.status()["pending"] == count
    assert gateway.answers_echo()
    # a restart while the archive is still down keeps the backlog (SIGTERM exits 0 at once)
    assert gateway.stop() == 0
    gateway.start()
    assert gateway.status()["pending"] == count

    archive.start()
    report = gateway.wait_forwarded(count, timeout=30)
    assert report["pending"] == 0
    assert report["forwarded"] == count
    assert report["destinations"]["archive"]["oldest_pending_age_seconds"] is None
    received = archive.datasets()
    assert len(received) == count
    assert len({ds.SOPInstanceUID for ds in received}) == count
    assert gateway.stop() == 0


@pytest.mark.parametrize("archive_state", ["up", "down"])
def test_sigkill_mid_association_loses_no_acknowledged_instance(
    peers: Peers, tmp_path: Path, archive_state: str
) -> None:
    """"up": the kill lands while instances are being received and forwarded; "down": while a
    backlog of acknowledged instances waits in the spool."""
    archive = peers.archive(start=archive_state == "up")
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    study = write_study(tmp_path / "src", "MRN-KILL-9", "Killed^Midstream", series=2, per_series=20)
    by_path = {i.path: i for i in study.instances}
    kill_after = 3 if archive_state == "up" else 10

    run = peers.send_in_background(gateway.port, study.paths, "storescu.log")
    wait_for(lambda: len(acknowledged(run.output())) >= kill_after, 30,
             f"{kill_after} acknowledged stores", interval=0.005)
    assert gateway.kill() == -9
    sent = run.wait()
    acked = sent.acknowledged()
    print(f"archive {archive_state}: storescu exit {sent.returncode}; {len(acked)} of "
          f"{len(study.paths)} acknowledged before the SIGKILL")
    assert kill_after <= len(acked) < len(study.paths), "the kill should land mid-association"
    assert sent.returncode != 0, sent.output  # the association broke under it

    gateway.start()  # the spool is recovered; what was acknowledged must get through
    if archive_state == "down":
        assert gateway.status()["pending"] >= len(acked)  # the backlog survived the kill
        archive.start()
    report = gateway.wait_status(60, "pending 0 after the restart", lambda r: r["pending"] == 0)

    export = gateway.cli("map", "export", "--kind", "uid")
    assert export.returncode == 0, export.stderr
    mapping = {r["original"]: r["pseudonym"] for r in csv.DictReader(io.StringIO(export.stdout))}
    counts = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                     for p in archive.files())
    missing = [p.name for p in acked if counts[mapping.get(by_path[p].sop_uid, "?")] == 0]
    assert not missing, f"acknowledged but never delivered: {missing}"
    duplicates = {uid: n for uid, n in counts.items() if n > 1}
    extra = len(counts) - len(acked)  # received and spooled, but the answer never reached storescu
    print(f"archive: {sum(counts.values())} files, {len(counts)} distinct instances, "
          f"{len(duplicates)} delivered more than once ({sum(duplicates.values())} copies), "
          f"{extra} not acknowledged but delivered; status after the restart: received "
          f"{report['received']}, forwarded {report['forwarded']}")
    # counters are statistics: the last second's may die with the process, never grow extra
    assert report["forwarded"] <= sum(counts.values())
    assert gateway.stop() == 0


def test_a_slow_archive_gets_instances_over_parallel_associations(
    peers: Peers, tmp_path: Path
) -> None:
    """forward.associations = 2: while one association waits for the archive, the other sends."""
    archive = peers.archive(start=False, options=("--fork", "--sleep-during", "1"))
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra="associations = 2")
    study = write_study(tmp_path / "src", "MRN-PAR-1", "Parallel^Senders", series=1, per_series=4)
    sent = storescu(gateway.port, study.paths)
    assert sent.returncode == 0, sent.output

    archive.start()  # a backlog of 4, each store taking the archive a second
    report = gateway.wait_forwarded(len(study.paths), timeout=60)
    assert report["forwarded"] == len(study.paths)
    assert len({ds.SOPInstanceUID for ds in archive.datasets()}) == len(study.paths)
    # two from the gateway (the third is the C-ECHO that checked the archive had started)
    assert archive.log_text().count("Association Received") == 3


def forwarding_pid(gateway: GatewayProcess) -> int | None:
    """The gateway's forwarding process (its only child), if it has one now."""
    assert gateway.process is not None
    children = [int(pid) for task in Path(f"/proc/{gateway.process.pid}/task").glob("*/children")
                for pid in task.read_text().split()]
    return children[0] if len(children) == 1 else None


def test_a_killed_forwarding_process_is_replaced_and_its_queue_is_not_lost(
    peers: Peers, tmp_path: Path
) -> None:
    archive = peers.archive(start=False)
    gateway = peers.gateway([DestinationSpec("archive", archive.port)])
    study = write_study(tmp_path / "src", "MRN-FWD-9", "Forwarder^Killed", series=1, per_series=5)
    sent = storescu(gateway.port, study.paths[:3])  # queued in the forwarding process
    assert sent.returncode == 0, sent.output

    first = wait_for(lambda: forwarding_pid(gateway), 10, "the forwarding process")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (forwarding_pid(gateway) or first) != first and forwarding_pid(gateway),
                      30, "a new forwarding process")
    assert gateway.answers_echo()  # receiving never stopped
    sent = storescu(gateway.port, study.paths[3:])
    assert sent.returncode == 0, sent.output

    archive.start()
    report = gateway.wait_forwarded(len(study.paths), timeout=60)
    assert report["pending"] == 0
    assert len({ds.SOPInstanceUID for ds in archive.datasets()}) == len(study.paths)
    assert "forwarding process ended; starting another" in gateway.stderr_path.read_text()
    assert gateway.stop() == 0
    wait_for(lambda: not Path(f"/proc/{second}").exists(), 10, "the forwarding process to end")
