"""Prometheus metrics (``[metrics] address``; off by default). Labels carry no patient data:
destinations, reasons and calling AE titles only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
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


def serve_metrics(address: str) -> None:
    """Start the /metrics endpoint at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host or "127.0.0.1")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"metrics.address: cannot serve metrics at {address!r} ({exc})") from exc
