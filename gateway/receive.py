"""The receiving node: C-ECHO and C-STORE SCP in front of the de-identify stage and the spool.

C-STORE success is answered only after the de-identified instance is durable in the spool (or
the original is durable in quarantine). When nothing can be persisted the answer is 0xA700, so
the sender keeps the image and tries again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from gateway import logs, metrics
from gateway.deid.engine import Policy
from gateway.deidentify import CleanInstance, deidentify_bytes
from gateway.errors import GatewayError, InstanceError, MalformedInstance, NotDicom, StateError
from gateway.quarantine import Quarantine
from gateway.settings import CallerRule, Destination, Settings
from gateway.spool import Spool, SpoolEntry
from gateway.state import FILTERED, FILTERED_COUNT, QUARANTINED, RECEIVED, Deliveries, PseudonymStore
from gateway.tls import server_context

log = logs.get_logger("receive")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

AE_T = TypeVar("AE_T", bound=AE)
Spooled = Callable[[SpoolEntry, frozenset[str]], None]


def set_tcp_nodelay(event: Event) -> None:
    """Nagle's algorithm adds ~40 ms to each small C-STORE response: turn it off."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class Routing:
    """What routing filters look at; the calling AE is known only while receiving."""

    modality: str
    sop_class_uid: str
    calling_ae: str

    def excluded_from(self, destinations: tuple[Destination, ...]) -> frozenset[str]:
        return frozenset(d.name for d in destinations if not self.accepted_by(d))

    def accepted_by(self, d: Destination) -> bool:
        return (
            (not d.modalities or self.modality.upper() in d.modalities)
            and (not d.sop_classes or self.sop_class_uid in d.sop_classes)
            and (not d.calling_aes or self.calling_ae in d.calling_aes)
        )


NOBODY = "\x00"  # a calling AE title no peer can have: rejects everyone from an unlisted host


class GatewayAE(AE):
    """An AE whose allowed calling AE titles depend on the caller's address.

    pynetdicom checks ``require_calling_aet`` during negotiation, in the association's own
    thread, and rejects a caller not in it with A-ASSOCIATE-RJ "calling AE title not
    recognized"; answering per association lets an AE title be bound to a host.
    """

    caller_rules: tuple[CallerRule, ...] = ()

    @property
    def require_calling_aet(self) -> list[str]:
        if not self.caller_rules:
            return []
        address = getattr(getattr(threading.current_thread(), "requestor", None), "address", None)
        titles = [r.ae_title for r in self.caller_rules if r.address in (None, address)]
        return titles or [NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self.caller_rules = tuple(CallerRule(t) for t in ae_titles)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def configured_ae(ae: AE_T, settings: Settings) -> AE_T:
    """The gateway's AE title, PDU size and timeouts, for receiving and sending alike."""
    g = settings.gateway
    ae.maximum_pdu_size = g.max_pdu
    ae.acse_timeout = g.acse_timeout
    ae.dimse_timeout = g.dimse_timeout
    ae.network_timeout = g.network_timeout
    return ae


class Receiver:
    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        secret: bytes,
        spool: Spool,
        store: PseudonymStore,
        deliveries: Deliveries,
        quarantine: Quarantine,
        on_spooled: Spooled,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.secret = secret
        self.spool = spool
        self.store = store
        self.deliveries = deliveries
        self.quarantine = quarantine
        self.on_spooled = on_spooled
        self.server: ThreadedAssociationServer | None = None

    # --- handlers ---

    def handle_echo(self, event: Event) -> int:
        return SUCCESS

    def handle_store(self, event: Event) -> int:
        started = time.perf_counter()
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        peer = f"{requestor.address}:{requestor.port}"
        source = f"{calling_ae}@{peer}"
        try:
            data = event.encoded_dataset(include_meta=True)
        except (AttributeError, ValueError, KeyError) as exc:
            return self._quarantine(b"", source, calling_ae, MalformedInstance(
                f"cannot read the C-STORE data set ({type(exc).__name__})"))
        log.info("received", calling_ae=calling_ae, peer=peer, size=len(data))
        metrics.RECEIVED_BYTES.inc(len(data))
        try:
            clean = deidentify_bytes(data, self.policy, self.secret)
        except InstanceError as exc:
            return self._quarantine(data, source, calling_ae, exc)
        except NotDicom as exc:
            return self._quarantine(data, source, calling_ae, MalformedInstance(str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine bug must not lose the instance
            return self._quarantine(data, source, calling_ae, MalformedInstance(
                f"unexpected {type(exc).__name__} while de-identifying"))
        log.info("de-identified", sop_instance_uid=clean.sop_instance_uid, calling_ae=calling_ae,
                 duration_ms=_ms(started))
        status = self._spool(clean, calling_ae)
        metrics.DEIDENTIFY_SECONDS.observe(time.perf_counter() - started)
        return status

    def _spool(self, clean: CleanInstance, calling_ae: str) -> int:
        result = clean.result
        routing = Routing(result.modality, result.sop_class_uid, calling_ae)
        excluded = routing.excluded_from(self.settings.destinations)
        try:
            entry = self.spool.put(clean.data, result.sop_class_uid, result.transfer_syntax_uid,
                                   clean.sop_instance_uid)
            if excluded:  # before the count: a restart must never send it there
                self.deliveries.record((entry.id, name, FILTERED) for name in excluded)
            counts = {(RECEIVED, ""): 1}
            counts.update({(FILTERED_COUNT, name): 1 for name in excluded})
            self.store.record(clean.result.pseudonyms, counts)
        except (StateError, OSError) as exc:
            log.error("not persisted", sop_instance_uid=clean.sop_instance_uid,
                      error=type(exc).__name__, status=f"0x{OUT_OF_RESOURCES:04X}")
            return OUT_OF_RESOURCES
        log.info("spooled", sop_instance_uid=clean.sop_instance_uid, entry_id=entry.id,
                 size=len(clean.data))
        metrics.RECEIVED.labels(calling_ae=calling_ae).inc()
        for name in excluded:
            log.info("filtered", sop_instance_uid=clean.sop_instance_uid, destination=name)
            metrics.FILTERED.labels(destination=name).inc()
        self.on_spooled(entry, excluded)
        return SUCCESS

    def _quarantine(self, data: bytes, source: str, calling_ae: str, error: InstanceError) -> int:
        try:
            record = self.quarantine.put(data, source, error, {"received_by": "serve"})
            self.deliveries.count({(QUARANTINED, ""): 1}, durable=True)
        except (GatewayError, OSError) as exc:
            log.error("not persisted", calling_ae=calling_ae, error=type(exc).__name__,
                      status=f"0x{OUT_OF_RESOURCES:04X}")
            return OUT_OF_RESOURCES
        status = SUCCESS if self.settings.gateway.on_deidentify_failure == "accept" else error.status
        log.warning("quarantined", quarantine_id=record.id, calling_ae=calling_ae,
                    reason=error.reason, error=type(error).__name__, status=f"0x{status:04X}")
        metrics.QUARANTINED.labels(reason=error.reason).inc()
        return status

    def _association_opened(self, event: Event) -> None:
        requestor = event.assoc.requestor
        log.info("association", calling_ae=str(requestor.ae_title).strip(),
                 peer=f"{requestor.address}:{requestor.port}")

    def _association_rejected(self, event: Event) -> None:
        requestor = event.assoc.requestor
        log.warning("association rejected", calling_ae=str(requestor.ae_title).strip(),
                    peer=f"{requestor.address}:{requestor.port}")

    def active_associations(self) -> int:
        return len(self.server.active_associations) if self.server is not None else 0

    # --- the server ---

    def make_ae(self) -> GatewayAE:
        g = self.settings.gateway
        ae = configured_ae(GatewayAE(ae_title=g.ae_title), self.settings)
        ae.maximum_associations = g.max_associations
        ae.require_called_aet = True
        ae.caller_rules = g.allowed_calling_aes
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> ThreadedAssociationServer:
        g = self.settings.gateway
        handlers = [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_ESTABLISHED, self._association_opened),
            (evt.EVT_REJECTED, self._association_rejected),
        ]
        ssl_context = server_context(self.settings.tls) if self.settings.tls.enabled else None
        server = self.make_ae().start_server(
            (g.host, g.port), block=False, evt_handlers=handlers,  # type: ignore[arg-type]
            ssl_context=ssl_context,
        )
        assert server is not None  # non-blocking start_server always returns the server
        self.server = server
        return server
