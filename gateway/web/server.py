"""Serving the console from the gateway process: uvicorn on its own thread (no signal handlers:
``serve`` owns SIGTERM and SIGINT), and a sampler that feeds the throughput chart."""

from __future__ import annotations

import socket
import threading

import uvicorn

from gateway import logs
from gateway.errors import ConfigError, StateError
from gateway.settings import Settings
from gateway.state import Accounts
from gateway.web.app import Console, create_app

log = logs.get_logger("web")

SAMPLE_SECONDS = 10.0
START_SECONDS = 10.0
STOP_SECONDS = 5.0


class _QuietServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the gateway's own handlers stay in place
        pass


class WebConsole:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accounts = Accounts(settings.database_url)
        self.console = Console(settings, self.accounts)
        self._stopped = threading.Event()
        self._server: _QuietServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> WebConsole:
        """Listen on ``web.address`` (the port is bound here, so a busy one fails at start)."""
        host, _, port = self.settings.web.address.rpartition(":")
        listener = _bind(host, int(port))
        tls = self.settings.tls
        ssl = {"ssl_certfile": str(tls.certificate), "ssl_keyfile": str(tls.private_key)} \
            if tls.enabled and tls.certificate and tls.private_key else {}
        config = uvicorn.Config(create_app(self.console), log_level="warning", access_log=False,
                                lifespan="off", server_header=False, **ssl)  # type: ignore[arg-type]
        self._server = _QuietServer(config)
        server = self._server
        serving = threading.Thread(target=lambda: server.run(sockets=[listener]), name="web",
                                   daemon=True)
        sampler = threading.Thread(target=self._sample, name="web-sampler", daemon=True)
        self._threads = [serving, sampler]
        for thread in self._threads:
            thread.start()
        log.info("web console", address=self.settings.web.address, tls=bool(ssl))
        return self

    @property
    def thread_map(self) -> dict[str, threading.Thread]:
        return {t.name: t for t in self._threads}

    def _sample(self) -> None:
        while not self._stopped.wait(SAMPLE_SECONDS):
            try:
                self.console.report()
            except StateError as exc:
                log.warning("web console sample failed", error=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - the chart must not end the console
                log.error("web console sample failed unexpectedly", error=type(exc).__name__)

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            thread.join(STOP_SECONDS)
        self.accounts.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"web.address: cannot listen on {host}:{port} ({exc.strerror})") from exc
    sock.set_inheritable(False)
    return sock
