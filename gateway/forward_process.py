"""Forwarding runs in a process of its own, so that senders and receivers never wait for each
other's turn at Python's interpreter lock (with both in one process, most of a receiving
thread's time under four associations went to waiting for it).

The serving process spools each instance and hands the new entry over a socket pair; the
forwarding process (``python -m gateway.forward_process``) queues and sends it
(``gateway/forward.py``). The spool stays the only record of what is owed: an entry whose message
is lost with a crashed process is found again when the next one starts and scans the spool.
The forwarding process gives forwarded files back for reuse and reports its queue depths and
metrics every second. It stops when told to, or when the serving process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs, metrics
from gateway.errors import GatewayError, StateError
from gateway.forward import Dispatcher
from gateway.health import Check
from gateway.quarantine import Quarantine
from gateway.resources import limit_malloc_arenas
from gateway.settings import DeidentifySettings, Settings
from gateway.spool import Spool, SpoolEntry
from gateway.state import Deliveries

log = logs.get_logger("forward")

REPORT_SECONDS = 1.0
START_SECONDS = 60.0  # bound on the forwarding process coming up (it scans the spool first)
RESTART_SECONDS = 1.0  # pause before starting a forwarding process that ended by itself
ORPHANED_STOP_SECONDS = 2.0  # bound on finishing sends once the serving process is gone
# Messages, as (kind, payload) tuples.
ENTRY = "entry"  # serving -> forwarding: a new spool entry, and who must not get it
STOP = "stop"  # serving -> forwarding: finish the current sends (within the payload's seconds)
REUSABLE = "reusable"  # forwarding -> serving: forwarded files to write the next entries over
SPARES_PER_MESSAGE = 16  # forwarded files handed back together (one message, one wake-up)
REPORT = "report"  # forwarding -> serving: queue depths and metrics


@dataclass(frozen=True)
class Report:
    """What the forwarding process last said about its queues and metrics."""

    pending: dict[str, int]
    oldest_age: dict[str, float]
    metrics_text: str
    threads: dict[str, bool] = dataclasses.field(default_factory=dict)  # name -> alive
    database_ok: bool = True  # its last state flush succeeded


def forwarding_settings(settings: Settings) -> Settings:
    """What the forwarding process is given: it never sees original data (no key, no patient
    table, no labels, no pixel rules) and needs no profile, so it never loads the engine."""
    return dataclasses.replace(settings, secret=None, deidentify=DeidentifySettings(), pixels=None,
                               profiles={}, labels=None)


class ForwardProcess:
    """The serving process's side: starts the forwarding process, hands it new entries, starts
    it again if it ends by itself, and stops it."""

    def __init__(self, settings: Settings, spool: Spool) -> None:
        self.settings = forwarding_settings(settings)
        self.spool = spool
        self.names = [d.name for d in settings.destinations]
        self.report = Report({n: 0 for n in self.names}, {n: 0.0 for n in self.names}, "")
        self._lock = threading.Lock()  # one message at a time on the connection
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._reported_at = time.monotonic()

    def start(self) -> ForwardProcess:
        """Start it; returns once it is forwarding, or raises StateError."""
        self._spawn()
        deadline = time.monotonic() + START_SECONDS
        while not self._ready.wait(0.05):
            process = self._process
            if process is None or process.poll() is not None or time.monotonic() > deadline:
                self.stop(1.0)
                raise StateError("the forwarding process did not start; its error is logged above")
        return self

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.forward_process", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send(self.settings)
        with self._lock:
            self._conn, self._process = conn, process
        log.info("forwarding process started", pid=process.pid)
        threading.Thread(target=self._listen, args=(conn, process), name="forward-process",
                         daemon=True).start()

    def submit(self, entry: SpoolEntry, done: frozenset[str]) -> None:
        """Hand over a new spool entry (``done``: destinations that must not get it). If the
        forwarding process is down, its next start finds the entry in the spool."""
        message = (ENTRY, (entry, sorted(done)))
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(message)

    def _listen(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        """Take its messages until it ends; start another unless stopping."""
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            if kind == REUSABLE:
                for spare in payload:
                    self.spool.reuse(Path(spare))
            elif kind == REPORT:
                self.report = Report(*payload)
                self._reported_at = time.monotonic()
                self._ready.set()
        with self._lock:
            if self._conn is conn:
                self._conn = None
        conn.close()
        if self._stopping.is_set() or not self._ready.is_set():
            return  # stopping, or it never came up: start() reports that
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)
        log.error("forwarding process ended; starting another", exit_code=process.returncode)
        if not self._stopping.wait(RESTART_SECONDS):
            try:
                self._spawn()
            except (OSError, ValueError) as exc:
                log.error("forwarding process not started", error=type(exc).__name__)

    def health(self) -> Check:
        """Running and reporting; and, as it last said, its threads and database."""
        process = self._process
        if process is None or process.poll() is not None:
            return Check("forwarding", False, "the forwarding process is not running")
        age = time.monotonic() - self._reported_at
        if age > REPORT_SECONDS * 10:
            return Check("forwarding", False, f"no report for {age:.0f} s")
        report = self.report
        dead = sorted(name for name, alive in report.threads.items() if not alive)
        if dead:
            return Check("forwarding", False, f"stopped: {', '.join(dead)}")
        if not report.database_ok:
            return Check("forwarding", False, "its database writes fail")
        return Check("forwarding", True)

    def pending(self) -> int:
        return sum(self.report.pending.values())

    def queue_depth(self, destination: str) -> int:
        return self.report.pending.get(destination, 0)

    def oldest_age(self, destination: str) -> float:
        return self.report.oldest_age.get(destination, 0.0)

    def stop(self, timeout: float) -> None:
        """Let the current sends finish (within ``timeout``) and end the process."""
        self._stopping.set()
        with self._lock:
            conn, process = self._conn, self._process
            if conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    conn.send((STOP, timeout))
        if process is None:
            return
        try:
            process.wait(timeout + 5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)

    def collect(self) -> Iterator[Metric]:
        """Its metrics as it last reported them (this object is a Prometheus collector)."""
        yield from text_string_to_metric_families(self.report.metrics_text)


# --- the forwarding process ----------------------------------------------------------------------


def main(fd: int) -> None:
    conn = Connection(fd)
    settings: Settings = conn.recv()
    os.nice(settings.forward.nice)  # receiving answers senders first (see ForwardSettings)
    # Ctrl-C reaches the whole process group; the serving process says when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(settings.logging.level, settings.logging.format)
    limit_malloc_arenas()
    Forwarding(settings, conn).run()


class Forwarding:
    """The forwarding process: a dispatcher fed from the connection."""

    def __init__(self, settings: Settings, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self._spares: list[str] = []  # forwarded files not yet handed back (under _send_lock)
        self._finished = threading.Event()
        spool = Spool(settings.spool_dir, recycle=self._give_back)
        self.deliveries = Deliveries(settings.database_url)
        self.dispatcher = Dispatcher(settings, spool, self.deliveries,
                                     Quarantine(settings.quarantine_dir))
        self.sending_metrics = CollectorRegistry(auto_describe=True)
        self._database_ok = True
        for metric in metrics.SENDING:
            self.sending_metrics.register(metric)

    def run(self) -> None:
        self.dispatcher.start()  # queues what the spool holds
        self._report()  # ready
        reporter = threading.Thread(target=self._report_loop, name="report", daemon=True)
        reporter.start()
        timeout = 20.0
        try:
            timeout = self._serve_messages()
        finally:  # after a bug too: the counters gathered in memory are written
            self.dispatcher.stop(timeout)
            self._finished.set()
            reporter.join(REPORT_SECONDS * 5)
            self.deliveries.close()
            self._report()

    def _serve_messages(self) -> float:
        """Entries from the serving process until it says stop (or is gone); the seconds the
        senders then get to finish."""
        while True:
            try:
                kind, payload = self.conn.recv()
            except (EOFError, OSError):
                return ORPHANED_STOP_SECONDS  # the serving process is gone: so is its lock
            if kind == ENTRY:
                entry, done = payload
                self.dispatcher.submit(entry, frozenset(done))
            elif kind == STOP:
                return float(payload)

    def _send(self, message: tuple[str, Any]) -> bool:
        with self._send_lock:
            return self._send_locked(message)

    def _send_locked(self, message: tuple[str, Any]) -> bool:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def _give_back(self, spare: Path) -> None:
        """Forwarded files go back in batches: a message per instance cost the serving
        process a thread wake-up per instance. The rest go with each report."""
        with self._send_lock:
            self._spares.append(str(spare))
            if len(self._spares) >= SPARES_PER_MESSAGE:
                self._hand_back_spares()

    def _hand_back_spares(self) -> None:
        """(``_send_lock`` held.) If the message fails, the next start deletes the files."""
        if self._spares:
            self._send_locked((REUSABLE, self._spares))
            self._spares = []

    def _report_loop(self) -> None:
        while not self._finished.wait(REPORT_SECONDS):
            try:
                self.deliveries.flush()
                self._database_ok = True
            except GatewayError as exc:
                self._database_ok = False
                log.warning("state flush failed; trying again", error=type(exc).__name__)
            if not self._report():
                return

    def _report(self) -> bool:
        with self._send_lock:
            self._hand_back_spares()
        queues = self.dispatcher.queues
        text = generate_latest(self.sending_metrics).decode()
        return self._send((REPORT, ({n: q.pending() for n, q in queues.items()},
                                    {n: q.oldest_age() for n, q in queues.items()}, text,
                                    self.dispatcher.threads_alive(), self._database_ok)))


if __name__ == "__main__":
    main(int(sys.argv[1]))
