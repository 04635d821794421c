"""The gateway's acceptor (``gateway.net.acceptor.Server``) started in the test process, with a
handler that records what it stores: a pytest plugin (``pytest_plugins = ["acceptors"]``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from netpeers import GATEWAY_AE, LOOPBACK, free_port

from gateway.net.acceptor import Server, ServerConfig, StoreRequest
from gateway.receive import storage_sop_class, transfer_syntax_supported


@dataclass
class Running:
    server: Server
    port: int
    stored: list[StoreRequest] = field(default_factory=list)


@pytest.fixture()
def start() -> Iterator[Callable[..., Running]]:
    """Starts servers (keyword arguments go to ServerConfig); stops them after the test."""
    servers: list[Server] = []

    def _start(handler: Callable[[StoreRequest], int] | None = None, **config: Any) -> Running:
        port = free_port()
        stored: list[StoreRequest] = []

        def on_store(request: StoreRequest) -> int:
            stored.append(request)
            return handler(request) if handler else 0x0000

        settings: dict[str, Any] = {
            "artim_timeout": 5.0, "dimse_timeout": 5.0, "network_timeout": 5.0,
            "implementation_class_uid": "1.2.826.0.1.3680043.10.999.2",
            "implementation_version_name": "TEST_UL",
            "storage_sop_class": storage_sop_class,
            "transfer_syntax_supported": transfer_syntax_supported,
        }
        settings.update(config)
        server = Server(ServerConfig(GATEWAY_AE, LOOPBACK, port, **settings), on_store).start()
        servers.append(server)
        return Running(server, port, stored)

    yield _start
    for server in servers:
        server.stop(2.0)
