"""Regression: the forwarder must not stall on its own association.

pynetdicom 3.0.4's reactor thread can take the C-STORE response meant for the sending thread,
which then waits out the DIMSE timeout, aborts and sends the instance again. With a 20 s DIMSE
timeout, 300 small instances through one association must arrive exactly once each, with no
retry in the gateway's log.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pydicom
from netpeers import DestinationSpec, Peers, requires_dcmtk, storescu, write_study

pytestmark = requires_dcmtk
COUNT = 300
# a retry, a timeout, an abort, or any warning or error at all (JSON or plain log lines)
TROUBLE = re.compile(
    r"unexpected|retry|retrying|timed out|timeout reached|dimse timeout|abort|traceback"
    r'|"level": "(warning|error|critical)"|\b(WARNING|ERROR|CRITICAL)\b',
    re.IGNORECASE,
)


def test_three_hundred_instances_through_one_association_without_a_stall(
    peers: Peers, tmp_path: Path
) -> None:
    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            gateway_extra="dimse_timeout = 20")
    study = write_study(tmp_path / "src", "MRN-MANY-300", "Many^Instances", series=3,
                        per_series=COUNT // 3, tiny=True)

    sent = storescu(gateway.port, study.paths)  # one association
    assert sent.returncode == 0, sent.output[-2000:]
    assert len(sent.acknowledged()) == COUNT
    assert sent.output.count("Association Accepted") == 1

    # bounded well below what even a single stall would need per instance (20 s) times a few
    report = gateway.wait_forwarded(COUNT, timeout=90)
    assert report["received"] == COUNT
    assert report["forwarded"] == COUNT
    assert report["quarantined"] == 0 and report["dead_lettered"] == 0

    # a stalled send is aborted and sent again: the archive would hold a second copy
    counts = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                     for p in archive.files())
    assert len(counts) == COUNT
    assert sum(counts.values()) == COUNT, {u: n for u, n in counts.items() if n > 1}
    assert gateway.stop() == 0
    trouble = [line for line in gateway.stderr().splitlines() if TROUBLE.search(line)]
    assert not trouble, "\n".join(trouble)
