"""What an administrator and a load balancer see of a node: ``status`` tells this node (is a
gateway serving from this config, since when, is it healthy, what its spool still owes) apart
from the cluster (totals in the shared database), and ``/healthz`` answers 200 only while the
node can accept instances."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from netpeers import (
    GATEWAY_AE,
    DestinationSpec,
    Peers,
    free_port,
    requires_dcmtk,
    storescu,
    wait_for,
    write_study,
)

pytestmark = requires_dcmtk


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_separates_this_node_from_the_cluster_and_healthz_follows_the_spool(
    peers: Peers, tmp_path: Path
) -> None:
    metrics_port = free_port()
    archive = peers.archive()
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra=f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')
    study = write_study(tmp_path / "src", "MRN-STATUS", "Status^Sam", series=1, per_series=2,
                        tiny=True)
    assert storescu(gateway.port, study.paths).returncode == 0
    gateway.wait_forwarded(2)

    report = gateway.status_sections()
    assert report["schema"] == 2 and set(report) == {"schema", "node", "cluster"}
    node, cluster = report["node"], report["cluster"]
    assert gateway.process is not None
    assert node["running"] is True and node["pid"] == gateway.process.pid
    assert node["healthy"] is True
    assert set(node["checks"]) == {"listening", "database", "spool", "forwarding", "threads"}
    assert node["listen"] == f"127.0.0.1:{gateway.port}"
    assert node["pending"] == 0 and node["destinations"]["archive"]["pending"] == 0
    assert node["quarantine"] == {"originals": 0, "dead_letters": 0}
    assert cluster["database"] == "reachable"
    assert cluster["received"] == 2 and cluster["destinations"]["archive"]["forwarded"] == 2
    assert cluster["map"]["patient"] == 1
    text = gateway.cli("status").stdout
    assert "this node      running (pid" in text and "healthy" in text and "cluster" in text

    # open associations are counted (what a node being drained waits for)
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    caller = AE(ae_title="DRAIN_CHECK")
    caller.add_requested_context(Verification)
    association = caller.associate("127.0.0.1", gateway.port, ae_title=GATEWAY_AE)
    assert association.is_established
    wait_for(lambda: gateway.status_sections()["node"].get("associations") == 1, 15,
             "status counting the open association")
    assert "  receiving    1 associations open" in gateway.cli("status").stdout
    association.release()
    wait_for(lambda: gateway.status_sections()["node"].get("associations") == 0, 15,
             "status counting no association")

    code, body = healthz(metrics_port)
    assert code == 200 and body["healthy"] is True

    # the spool cannot take files (as on a broken disk): the balancer must stop sending here
    staging = gateway.workdir / "var" / "spool" / "tmp"
    shutil.rmtree(staging)
    staging.write_text("")
    wait_for(lambda: healthz(metrics_port)[0] == 503, 15, "/healthz answering 503")
    code, body = healthz(metrics_port)
    assert body["healthy"] is False and body["checks"]["spool"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    staging.unlink()
    staging.mkdir(mode=0o700)
    wait_for(lambda: healthz(metrics_port)[0] == 200, 15, "/healthz answering 200 again")

    assert gateway.stop() == 0
    stopped = gateway.status_sections()
    assert stopped["node"]["running"] is False
    assert stopped["cluster"]["received"] == 2
    assert "no gateway is serving" in gateway.cli("status").stdout
