"""Prometheus metrics (``[metrics] address``; off by default). Labels carry no patient data:
destinations, reasons and calling AE titles only."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric

from gateway.errors import ConfigError

RECEIVED = Counter("dicom_gateway_instances_received_total",
                   "Instances received and durably spooled", ["calling_ae"])
RECEIVED_BYTES = Counter("dicom_gateway_received_bytes_total", "Bytes received in C-STORE data sets")
QUARANTINED = Counter("dicom_gateway_instances_quarantined_total",
                      "Instances kept in quarantine instead of being passed on", ["reason"])
FORWARDED = Counter("dicom_gateway_instances_forwarded_total",
                    "Instances acknowledged by a destination", ["destination"])
FORWARDED_BYTES = Counter("dicom_gateway_forwarded_bytes_total",
                          "Bytes acknowledged by a destination", ["destination"])
DEAD_LETTERED = Counter("dicom_gateway_instances_dead_lettered_total",
                        "Instances a destination refused for good", ["destination"])
FILTERED = Counter("dicom_gateway_instances_filtered_total",
                   "Instances a destination's routing filter left out", ["destination"])
DEIDENTIFY_SECONDS = Histogram("dicom_gateway_deidentify_seconds",
                               "De-identifying and spooling one received instance",
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
FORWARD_SECONDS = Histogram("dicom_gateway_forward_seconds", "One C-STORE to a destination",
                            ["destination"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
QUEUE_DEPTH = Gauge("dicom_gateway_queue_depth", "Instances waiting for a destination",
                    ["destination"])
OLDEST_PENDING = Gauge("dicom_gateway_oldest_pending_age_seconds",
                       "Age of the oldest instance waiting for a destination", ["destination"])
ACTIVE_ASSOCIATIONS = Gauge("dicom_gateway_active_associations", "Inbound associations open now")


# Counted where instances are sent: in the forwarding process (gateway/forward_process.py).
SENDING = (FORWARDED, FORWARDED_BYTES, DEAD_LETTERED, FORWARD_SECONDS)


class Collector(Protocol):
    def collect(self) -> Iterator[Metric]: ...


def collect_from(forwarding: Collector) -> None:
    """Serve the sending metrics as the forwarding process reports them, not this process's
    own (unused) ones."""
    for metric in SENDING:
        REGISTRY.unregister(metric)
    REGISTRY.register(forwarding)


def track_destination(name: str, depth: Callable[[], float], oldest: Callable[[], float]) -> None:
    QUEUE_DEPTH.labels(destination=name).set_function(depth)
    OLDEST_PENDING.labels(destination=name).set_function(oldest)


Health = Callable[[], tuple[bool, dict[str, Any]]]  # can this node accept, and why (JSON)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a balancer probes every few seconds: no line per request


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_metrics(address: str, health: Health | None = None) -> None:
    """Start the /metrics endpoint at ``host:port`` and, with ``health``, /healthz beside it:
    200 when the node can accept instances, 503 otherwise (what a load balancer checks)."""
    host, _, port = address.rpartition(":")
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if health is None or environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        ok, record = health()
        body = json.dumps(record).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]

    try:
        server = make_server(host or "127.0.0.1", int(port), app, _ThreadingServer,
                             handler_class=_QuietHandler)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"metrics.address: cannot serve metrics at {address!r} ({exc})") from exc
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
