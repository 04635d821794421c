"""``status``: this node (is a gateway serving from this config, how healthy, what its spool still
owes each destination, its quarantine) apart from the cluster (the counts and the map in the
database that every node sharing it writes to)."""

from __future__ import annotations

import time
from typing import Any

from gateway.errors import StateError
from gateway.health import read_node
from gateway.quarantine import Quarantine
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.state import Deliveries, pending_report, totals_report

SCHEMA = 2  # status --json's layout: {"schema", "node", "cluster"}


def status(settings: Settings) -> dict[str, Any]:
    destinations = [d.name for d in settings.destinations]
    spool_ids = Spool(settings.spool_dir).ids()
    node: dict[str, Any] = {**read_node(settings.data_dir), "data_dir": str(settings.data_dir),
                            "spool_entries": len(spool_ids),
                            "quarantine": quarantine_counts(Quarantine(settings.quarantine_dir))}
    cluster: dict[str, Any] = {"database": "reachable"}
    try:
        deliveries = Deliveries(settings.database_url)
    except StateError as exc:
        return {"schema": SCHEMA, "node": node, "cluster": {"database": "unreachable",
                                                            "error": str(exc)}}
    try:
        pending = pending_report(deliveries, spool_ids, destinations, time.time())
        cluster.update(totals_report(deliveries, destinations))
    except StateError as exc:
        return {"schema": SCHEMA, "node": node, "cluster": {"database": "unreachable",
                                                            "error": str(exc)}}
    finally:
        deliveries.close()
    node["pending"] = sum(int(d["pending"]) for d in pending.values())  # type: ignore[call-overload]
    node["destinations"] = pending
    return {"schema": SCHEMA, "node": node, "cluster": cluster}


def quarantine_counts(quarantine: Quarantine) -> dict[str, int]:
    records = quarantine.list()
    dead = sum(1 for r in records if r.context.get("dead_letter"))
    return {"originals": len(records) - dead, "dead_letters": dead}


def text_lines(report: dict[str, Any]) -> list[str]:
    """The report for a person: the node first, then the cluster."""
    node, cluster = report["node"], report["cluster"]
    if node.get("running"):
        health = "healthy" if node.get("healthy") else "UNHEALTHY: " + ", ".join(
            f"{name} ({check['detail']})" for name, check in node.get("checks", {}).items()
            if not check["ok"])
        lines = [f"this node      running (pid {node['pid']}, since {node['started']}), {health}",
                 f"  receiving    {node.get('associations', '?')} associations open"]
    else:
        lines = ["this node      no gateway is serving from this data folder"]
    q = node["quarantine"]
    lines.append(f"  spool        {node['spool_entries']} entries, {node.get('pending', '?')} "
                 "deliveries pending")
    lines.append(f"  quarantine   {q['originals']} originals, {q['dead_letters']} dead letters")
    for name, d in node.get("destinations", {}).items():
        age = d["oldest_pending_age_seconds"]
        oldest = "" if age is None else f", oldest {age:.0f} s"
        lines.append(f"  {name}: pending {d['pending']}{oldest}")
    if cluster["database"] != "reachable":
        lines.append(f"cluster        database UNREACHABLE ({cluster.get('error', '')})")
        return lines
    lines.append("cluster        (every node sharing this database)")
    for key in ("received", "forwarded", "quarantined", "dead_lettered"):
        lines.append(f"  {key:13}{cluster[key]}")
    sizes = cluster["map"]
    lines.append(f"  map          {sizes.get('patient', 0)} patients, {sizes.get('uid', 0)} UIDs")
    for name, d in cluster["destinations"].items():
        lines.append(f"  {name}: forwarded {d['forwarded']}, dead letters {d['dead_lettered']}, "
                     f"filtered {d['filtered']}")
    return lines
