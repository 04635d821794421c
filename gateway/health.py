"""Whether this node can take instances now, for a load balancer (``/healthz``) and ``status``.

A node can accept when it listens, its database answers, its spool takes files and its
forwarding process runs. The serving process checks that every few seconds and writes what it
found to ``<data_dir>/node.json`` (with its pid and start time), so ``status`` (another process)
can say whether a gateway is running for this config and how it is; ``/healthz`` answers from
the same checks. Nothing here carries patient data.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway import logs
from gateway.files import write_private

log = logs.get_logger("health")

NODE_FILE = "node.json"
CHECK_SECONDS = 2.0
STALE_SECONDS = 15.0  # a node file older than this comes from a gateway that is not running


@dataclass(frozen=True)
class Check:
    name: str  # listening, database, spool, forwarding, threads
    ok: bool
    detail: str = ""  # why not, in words (never values from data sets)


@dataclass(frozen=True)
class NodeHealth:
    checks: tuple[Check, ...]
    checked_at: float  # time.time()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.ok,
                "checked_at": datetime.fromtimestamp(self.checked_at, UTC).isoformat(),
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}}


def database_check(engine: Engine) -> Check:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check("database", False, f"unreachable ({type(exc).__name__})")
    return Check("database", True)


def spool_check(staging: Path) -> Check:
    """A file can be made where received instances are written first."""
    probe = staging / f".health-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        return Check("spool", False, f"not writable ({exc.strerror})")
    return Check("spool", True)


@dataclass
class Probes:
    """What the serving process knows about its own parts."""

    listening: Callable[[], bool]
    engine: Engine
    staging: Path
    forwarding: Callable[[], Check]
    threads: Callable[[], dict[str, bool]]  # name -> alive
    associations: Callable[[], int]  # open now (a node being drained is done at 0)


class HealthMonitor:
    """Checks every CHECK_SECONDS on its own thread; ``current`` is the last result."""

    def __init__(self, probes: Probes, node_file: Path, started: float, listen: str) -> None:
        self.probes = probes
        self.node_file = node_file
        self.started = started
        self.listen = listen
        self._current = NodeHealth((Check("starting", False, "not checked yet"),), time.time())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)

    def start(self) -> HealthMonitor:
        self.check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(CHECK_SECONDS * 2)
        self.node_file.unlink(missing_ok=True)  # not running any more

    @property
    def current(self) -> NodeHealth:
        return self._current

    def check(self) -> NodeHealth:
        p = self.probes
        threads = p.threads()
        dead = sorted(name for name, alive in threads.items() if not alive)
        health = NodeHealth((
            Check("listening", p.listening(), "" if p.listening() else "not listening"),
            database_check(p.engine),
            spool_check(p.staging),
            p.forwarding(),
            Check("threads", not dead, f"stopped: {', '.join(dead)}" if dead else ""),
        ), time.time())
        if health.ok != self._current.ok:
            failing = [c.name for c in health.checks if not c.ok]
            if health.ok:
                log.info("node healthy again")
            else:
                log.warning("node unhealthy", failing=failing)
        self._current = health
        self._write(health)
        return health

    def _loop(self) -> None:
        while not self._stopped.wait(CHECK_SECONDS):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the monitor must outlive any bug
                log.error("health check failed", error=type(exc).__name__)

    def _write(self, health: NodeHealth) -> None:
        record = {"pid": os.getpid(), "listen": self.listen,
                  "started": datetime.fromtimestamp(self.started, UTC).isoformat(),
                  "associations": self.probes.associations(),
                  "updated": time.time(), **health.as_dict()}
        temp = self.node_file.with_name(f".{NODE_FILE}.{os.getpid()}")
        try:
            temp.unlink(missing_ok=True)
            write_private(temp, json.dumps(record).encode())
            os.replace(temp, self.node_file)
        except OSError as exc:
            log.warning("node file not written", error=type(exc).__name__)


def read_node(data_dir: Path, now: float | None = None) -> dict[str, Any]:
    """What ``status`` says of the node serving from ``data_dir``: running or not, and how."""
    try:
        record: dict[str, Any] = json.loads((data_dir / NODE_FILE).read_text())
    except (OSError, ValueError):
        return {"running": False}
    now = time.time() if now is None else now
    pid = record.get("pid")
    fresh = isinstance(record.get("updated"), int | float) and now - record["updated"] < STALE_SECONDS
    if not isinstance(pid, int) or not fresh or not _alive(pid):
        return {"running": False}
    return {"running": True, **{k: v for k, v in record.items() if k != "updated"}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True

