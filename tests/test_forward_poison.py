"""No head-of-line blocking: an instance the archive aborts on (or answers 0xA7xx for) goes to
the back of its destination's queue with a strike, the rest of the study keeps flowing, and
after ``forward.max_attempts`` strikes while the archive took others it is a dead letter with
the reason. An archive that fails everything dead-letters nothing: it backs off and retries.

The archive is a pynetdicom SCP (tests/netpeers.py PynetdicomArchive) that misbehaves for one
InstanceNumber, which de-identification keeps. One sender per destination, so the order of
events (and the outcome) does not depend on thread timing; every wait is bounded.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from netpeers import (
    ABORT,
    DestinationSpec,
    Peers,
    PynetdicomArchive,
    ct_template,
    requires_dcmtk,
    storescu,
    wait_for,
    write_instance,
)
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

pytestmark = requires_dcmtk

CT = "1.2.840.10008.5.1.4.1.1.2"
NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
POISON = 666
ONE_SENDER = "associations = 1"


@pytest.fixture()
def peers(tmp_path: Path) -> Iterator[Peers]:
    started = Peers(tmp_path)
    yield started
    started.close()


@pytest.fixture()
def archives() -> Iterator[list[PynetdicomArchive]]:
    started: list[PynetdicomArchive] = []
    yield started
    for archive in started:
        archive.stop()


def study_with_poison(folder: Path, others: int, poison_at: int) -> list[Path]:
    """``others`` tiny CT instances numbered 1.., and one numbered POISON at ``poison_at``."""
    template = ct_template(tiny=True)
    study, series = generate_uid(), generate_uid()
    numbers = list(range(1, others + 1))
    numbers.insert(poison_at, POISON)
    return [write_instance(folder, template, "MRN-POISON-1", "Poison^Pill", study, series,
                           number=n).path for n in numbers]


class Poisoner:
    """An archive's ``decide``: ``fault`` for the poisoned instance, store the others; counts
    the C-STOREs of the poisoned one."""

    def __init__(self, fault: int | str) -> None:
        self.fault = fault
        self.poison_attempts = 0
        self._lock = threading.Lock()

    def __call__(self, dataset: Dataset) -> int | str | None:
        if int(dataset.InstanceNumber) != POISON:
            return None
        with self._lock:
            self.poison_attempts += 1
        return self.fault


@pytest.mark.parametrize("fault", [ABORT, 0xA700], ids=["abort", "out-of-resources"])
def test_a_poisoned_instance_becomes_a_dead_letter_while_the_rest_of_its_study_arrives(
    peers: Peers, archives: list[PynetdicomArchive], tmp_path: Path, fault: int | str
) -> None:
    poisoner = Poisoner(fault)
    archive = PynetdicomArchive([CT], NATIVE, decide=poisoner).start()
    archives.append(archive)
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra=f"{ONE_SENDER}\nmax_attempts = 5")
    paths = study_with_poison(tmp_path / "src", others=20, poison_at=4)
    sent = storescu(gateway.port, paths)
    assert sent.returncode == 0 and len(sent.acknowledged()) == 21, sent.output

    gateway.wait_status(60, "20 forwarded and 1 dead letter", lambda r: r["pending"] == 0
                        and r["dead_lettered"] == 1 and r["forwarded"] == 20)
    assert sorted(int(ds.InstanceNumber) for ds in archive.stored) == list(range(1, 21))
    (record,) = gateway.quarantine()
    assert record["reason"] == "dead-letter" and record["context"]["destination"] == "archive"
    last = (r"association lost \((PeerAborted|PeerClosed)\)|no response" if fault == ABORT
            else r"status 0xA700")
    found = re.fullmatch(rf"archive aborted or failed it (\d+) times while accepting others; "
                         rf"last: ({last})", record["message"])
    assert found, record["message"]
    # five strikes at least (more only if it ran out of others to let through before the fifth)
    assert int(found.group(1)) == poisoner.poison_attempts >= 5
    assert gateway.stop() == 0


def test_an_archive_that_fails_everything_dead_letters_nothing_and_gets_all_once_it_recovers(
    peers: Peers, archives: list[PynetdicomArchive], tmp_path: Path
) -> None:
    broken = threading.Event()
    broken.set()
    archive = PynetdicomArchive([CT], NATIVE,
                                decide=lambda _ds: ABORT if broken.is_set() else None).start()
    archives.append(archive)
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra=f"{ONE_SENDER}\nmax_attempts = 2")
    paths = study_with_poison(tmp_path / "src", others=2, poison_at=0)  # no poison: all fail
    assert storescu(gateway.port, paths).returncode == 0

    # every instance fails well past max_attempts: nothing is a dead letter, all stay queued
    wait_for(lambda: archive.attempts >= 3 * 3, 60, "three failed stores of each instance")
    report = gateway.status()
    assert report["dead_lettered"] == 0 and report["forwarded"] == 0 and report["pending"] == 3

    broken.clear()
    report = gateway.wait_forwarded(3, timeout=60)
    assert report["dead_lettered"] == 0 and gateway.quarantine() == []
    assert sorted(int(ds.InstanceNumber) for ds in archive.stored) == [1, 2, POISON]
    assert gateway.stop() == 0
