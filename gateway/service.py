"""``serve``: wires receive -> de-identify -> spool -> forward, and stops cleanly.

On SIGTERM or SIGINT the gateway stops accepting associations, lets in-flight stores finish
(bounded), stops the senders after their current instance, and exits. Whatever is still in the
spool is sent after the next start.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from gateway import logs, metrics
from gateway.checks import tls_files_for_serving
from gateway.errors import ConfigError, GatewayError
from gateway.forward_process import ForwardProcess
from gateway.health import NODE_FILE, HealthMonitor, Probes
from gateway.quarantine import Quarantine
from gateway.receive import Receiver
from gateway.resources import descriptors_needed, limit_malloc_arenas, raise_descriptor_limit
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.state import Deliveries, PseudonymStore

if TYPE_CHECKING:
    from gateway.web.server import WebConsole

log = logs.get_logger("service")

SHUTDOWN_SECONDS = 20.0
STATE_FLUSH_SECONDS = 1.0  # bound on finishing in-flight stores and sends


@dataclass
class Gateway:
    """A running gateway (also used in-process by tests)."""

    settings: Settings
    receiver: Receiver
    forwarding: ForwardProcess
    store: PseudonymStore
    deliveries: Deliveries
    data_dir_lock: int  # a file descriptor holding the data folder's lock while serving
    health: HealthMonitor | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _threads: dict[str, threading.Thread] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings) -> Gateway:
        if not settings.destinations:
            raise ConfigError("destinations: serve needs at least one [[destinations]] block")
        secret = settings.require_secret()
        policy = settings.policy()
        settings.prepare_data_dir()
        _fit_descriptor_limit(settings)
        lock = _lock_data_dir(settings)
        spool = Spool(settings.spool_dir).prepare(owner=True)
        store = PseudonymStore(settings.database_url)
        deliveries = Deliveries(settings.database_url)
        quarantine = Quarantine(settings.quarantine_dir)
        forwarding = ForwardProcess(settings, spool).start()
        receiver = Receiver(settings, policy, secret, spool, store, deliveries, quarantine,
                            on_spooled=forwarding.submit)
        try:
            receiver.start()
        except OSError as exc:
            forwarding.stop(1.0)
            os.close(lock)
            raise ConfigError(
                f"gateway.port: cannot listen on {settings.gateway.host}:{settings.gateway.port}"
                f" ({exc.strerror}); is another gateway running?"
            ) from exc
        gateway = cls(settings, receiver, forwarding, store, deliveries, lock)
        flusher = threading.Thread(target=gateway._flush_state, name="state-flush", daemon=True)
        flusher.start()
        gateway._threads["state-flush"] = flusher
        gateway.health = gateway._monitor(spool).start()
        return gateway

    def _monitor(self, spool: Spool) -> HealthMonitor:
        g = self.settings.gateway
        probes = Probes(
            listening=self.receiver.listening,
            engine=self.store.engine,
            staging=spool.staging,
            forwarding=self.forwarding.health,
            threads=lambda: {name: t.is_alive() for name, t in self._threads.items()},
            associations=self.receiver.active_associations,
        )
        return HealthMonitor(probes, self.settings.data_dir / NODE_FILE, time.time(),
                             f"{g.host}:{g.port}")

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        """For ``/healthz``: the last check (at most a few seconds old)."""
        if self.health is None:
            return False, {"healthy": False}
        current = self.health.current
        return current.ok, current.as_dict()

    def _flush_state(self) -> None:
        """Counters and map statistics gathered in memory reach the database every second."""
        while not self._stopped.wait(STATE_FLUSH_SECONDS):
            try:
                self.store.flush()
                self.deliveries.flush()
            except GatewayError as exc:
                log.warning("state flush failed; trying again", error=type(exc).__name__)

    def pending(self) -> int:
        return self.forwarding.pending()

    def track_metrics(self) -> None:
        forwarding = self.forwarding
        for name in forwarding.names:
            metrics.track_destination(name, partial(forwarding.queue_depth, name),
                                      partial(forwarding.oldest_age, name))
        metrics.collect_from(forwarding)
        metrics.ACTIVE_ASSOCIATIONS.set_function(self.receiver.active_associations)

    def stop(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        log.info("stopping", pending=self.pending())
        deadline = time.monotonic() + timeout
        # No new associations; stores in flight are answered, then the associations aborted.
        if self.health is not None:
            self.health.stop()
        self.receiver.stop(timeout)
        self.forwarding.stop(max(0.0, deadline - time.monotonic()))
        self.receiver.spool.close()
        self._stopped.set()
        self.store.close()
        self.deliveries.close()
        os.close(self.data_dir_lock)


def _fit_descriptor_limit(settings: Settings) -> None:
    needed = descriptors_needed(settings)
    soft, hard = raise_descriptor_limit(needed)
    if soft < needed:  # serve anyway: fewer senders at once is better than none
        log.warning("file-descriptor limit below what the configuration needs", limit=soft,
                    needed=needed, fix="raise LimitNOFILE (systemd) or --ulimit nofile (Docker)")


def _lock_data_dir(settings: Settings) -> int:
    """One serving gateway per data folder: a second would share (and clean) its spool."""
    fd = os.open(settings.data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ConfigError(
            f"gateway.data_dir: another gateway is serving from {settings.data_dir}; stop it, "
            "or give this one its own data_dir"
        ) from exc
    return fd


def _start_web(settings: Settings, gateway: Gateway) -> WebConsole | None:
    """The web console (``[web] address``), its threads watched by the health checks."""
    if not settings.web.address:
        return None
    from gateway.web.server import WebConsole  # the web stack only when it is turned on

    try:
        web = WebConsole(settings).start()
    except GatewayError:
        gateway.stop()
        raise
    gateway._threads.update({f"web:{name}": thread for name, thread in web.thread_map.items()})
    return web


def refuse_unusable_tls_files(settings: Settings) -> None:
    """An expired or not yet valid certificate, or a key others may read or one encrypted, stops
    ``serve`` before it listens (peers would fail every handshake); expiry within 30 days is a
    warning in the log."""
    for finding in tls_files_for_serving(settings):
        if not finding.ok:
            raise ConfigError(f"{finding.key}: {finding.message}")
        if finding.warning:
            log.warning("certificate expires soon", key=finding.key, detail=finding.message)


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT."""
    logs.configure(settings.logging.level, settings.logging.format)
    limit_malloc_arenas()
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    refuse_unusable_tls_files(settings)
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    gateway = Gateway.start(settings)
    if settings.metrics.address:
        metrics.serve_metrics(settings.metrics.address, gateway.healthz)
        gateway.track_metrics()
    web = _start_web(settings, gateway)
    g = settings.gateway
    log.info("started", ae_title=g.ae_title, host=g.host, port=g.port,
             destinations=[d.name for d in settings.destinations], pending=gateway.pending())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if web is not None:
            web.stop()
        gateway.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped")
