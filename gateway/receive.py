"""The receiving node: C-ECHO and C-STORE SCP in front of the de-identify stage and the spool.

C-STORE success is answered only after the de-identified instance is durable in the spool (or
the original is durable in quarantine). When nothing can be persisted the answer is 0xA700, so
the sender keeps the image and tries again.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from pydicom.uid import UID, UID_dictionary

from gateway import logs, metrics
from gateway.deid.elements import PREAMBLE, file_meta
from gateway.deid.engine import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    Policy,
    Pseudonym,
    Result,
)
from gateway.deidentify import CleanInstance, deidentify_received
from gateway.errors import GatewayError, InstanceError, MalformedInstance, NotDicom, StateError
from gateway.net.acceptor import Server, ServerConfig, StoreRequest
from gateway.net.tls import server_context
from gateway.profiles import (
    Original,
    Profile,
    announce_keeps,
    edited,
    map_pairs,
    plain,
    profiles_in_use,
    unique_pairs,
)
from gateway.quarantine import Quarantine
from gateway.settings import CallerRule, Destination, Settings
from gateway.spool import Spool, SpoolEntry, StagedEntry
from gateway.state import (
    FILTERED,
    FILTERED_COUNT,
    QUARANTINED,
    RECEIVED,
    Deliveries,
    PseudonymStore,
)

log = logs.get_logger("receive")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900  # PS3.4 B.2.3: the data set is not what its command says

Spooled = Callable[[SpoolEntry, frozenset[str]], None]


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


def caller_allowed(rules: tuple[CallerRule, ...], calling_ae: str, address: str,
                   certificate_subject: tuple[tuple[str, str], ...] = ()) -> bool:
    """No rules: everyone. Otherwise a rule must name the title, and the address if it has one
    (``"PACS@10.0.0.5"``), and the client certificate's subject attributes if it has them
    (``"PACS@cert:CN=pacs.example.org"``): a certificate the CA signed for one site cannot
    call under another site's title."""
    return not rules or any(
        r.ae_title.strip() == calling_ae and r.address in (None, address)
        and all(pair in certificate_subject for pair in r.certificate_subject)
        for r in rules)


# Digits and dots, at most 64 characters (PS3.5 9.1; components with a leading zero, which the
# standard forbids but some devices send, are let through): anything else is refused before
# pydicom sees it, which would warn about every malformed UID a hostile peer makes up.
_UID_SYNTAX = re.compile(r"[0-9]+(\.[0-9]+)*")


def uid_syntax(uid: str) -> bool:
    return len(uid) <= 64 and _UID_SYNTAX.fullmatch(uid) is not None


# Storage SOP classes of objects that belong to no patient or study (PS3.3 A.38, A.58, A.61-A.63,
# A.82-A.83, A.87, A.88): nothing to de-identify, and no study to forward them in.
NON_PATIENT_STORAGE = frozenset({
    "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage
    "1.2.840.10008.5.1.4.39.1",  # Color Palette Storage
    "1.2.840.10008.5.1.4.43.1",  # Generic Implant Template Storage
    "1.2.840.10008.5.1.4.44.1",  # Implant Assembly Template Storage
    "1.2.840.10008.5.1.4.45.1",  # Implant Template Group Storage
    "1.2.840.10008.5.1.4.1.1.200.1",  # CT Defined Procedure Protocol Storage
    "1.2.840.10008.5.1.4.1.1.200.3",  # Protocol Approval Storage
    "1.2.840.10008.5.1.4.1.1.200.7",  # XA Defined Procedure Protocol Storage
    "1.2.840.10008.5.1.4.1.1.201.1",  # Inventory Storage
})


@lru_cache(maxsize=1024)
def storage_sop_class(uid: str) -> bool:
    """Every storage SOP class of patient data, private and unknown ones as well (a newer
    standard's); refused: what the UID dictionary names as something else (Verification,
    queries, worklists, print, storage commitment, well-known instances, transfer syntaxes) and
    the non-patient objects."""
    if not uid_syntax(uid) or uid in NON_PATIENT_STORAGE:
        return False
    entry = UID_dictionary.get(uid)
    if entry is None or not entry[0]:
        return True
    name, kind = entry[0], entry[1]
    return kind == "SOP Class" and "Storage" in name and "Storage Commitment" not in name


@lru_cache(maxsize=256)
def transfer_syntax_supported(uid: str) -> bool:
    """The transfer syntaxes pydicom's UID dictionary lists as such: native, deflated and every
    encapsulated one. A private or unknown one cannot be de-identified: refused at negotiation."""
    return uid_syntax(uid) and UID(uid).is_transfer_syntax


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the file meta group for a data set received by C-STORE."""
    meta = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, IMPLEMENTATION_CLASS_UID,
                     IMPLEMENTATION_VERSION_NAME)
    return bytes(PREAMBLE) + b"DICM" + meta


def command_mismatch(request: StoreRequest, result: Result) -> str:
    """The attribute in which the data set contradicts its C-STORE-RQ ("" when it does not): the
    SOP Class UID, or the SOP Instance UID (compared through its pseudonym)."""
    if result.sop_class_uid != request.sop_class_uid:
        return "SOPClassUID"
    instance = result.sop_instance_uid
    if instance != request.sop_instance_uid and not any(
            p.kind == "uid" and p.original == request.sop_instance_uid and p.pseudonym == instance
            for p in result.pseudonyms):
        return "SOPInstanceUID"
    return ""


def _quarantine_reason(exc: Exception) -> InstanceError:
    if isinstance(exc, InstanceError):
        return exc
    if isinstance(exc, NotDicom):
        return MalformedInstance(str(exc))
    return MalformedInstance(f"unexpected {type(exc).__name__} while de-identifying")


def _same_failures(failures: list[tuple[Profile, InstanceError]]
                   ) -> list[tuple[tuple[str, ...], InstanceError]]:
    """Failures grouped by what failed: an original that fails alike under several profiles
    (a malformed instance fails under every one) is quarantined once, for all of them."""
    groups: dict[tuple[type, str], tuple[list[str], InstanceError]] = {}
    for profile, error in failures:
        names, _ = groups.setdefault((type(error), str(error)), ([], error))
        names.append(profile.name)
    return [(tuple(names), error) for names, error in groups.values()]


def _not_persisted(sop_instance_uid: str, exc: Exception) -> int:
    log.error("not persisted", sop_instance_uid=sop_instance_uid, error=type(exc).__name__,
              status=f"0x{OUT_OF_RESOURCES:04X}")
    return OUT_OF_RESOURCES


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


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
        self.pixels = settings.pixel_policy()
        self.secret = secret
        self.spool = spool
        self.store = store
        self.deliveries = deliveries
        self.quarantine = quarantine
        self.on_spooled = on_spooled
        self.server: Server | None = None
        self.profiles = profiles_in_use(settings)
        self.plain = plain(self.profiles)
        announce_keeps(self.profiles)

    # --- the C-STORE handler (C-ECHO is answered by the upper layer) ---

    def handle_store(self, request: StoreRequest) -> int:
        started = time.perf_counter()
        calling_ae = request.calling_ae
        peer = f"{request.address}:{request.port}"
        source = f"{calling_ae}@{peer}"
        size = len(request.dataset)
        # One info line per instance ("spooled", below); the stages before it at debug level.
        log.debug("received", calling_ae=calling_ae, peer=peer, size=size)
        metrics.RECEIVED_BYTES.inc(size)
        if not self.plain:
            return self._store_profiles(request, source, peer, started)
        try:
            clean = deidentify_received(request.dataset, request.transfer_syntax, self.policy,
                                        self.secret, self.pixels)
        except Exception as exc:  # noqa: BLE001 - an engine bug must not lose the instance
            # The original as a file, for the quarantine.
            data = part10_header(request.sop_class_uid, request.sop_instance_uid,
                                 request.transfer_syntax) + request.dataset
            return self._quarantine(data, source, calling_ae, _quarantine_reason(exc))
        log.debug("de-identified", sop_instance_uid=clean.sop_instance_uid, calling_ae=calling_ae,
                  duration_ms=_ms(started))
        mismatch = command_mismatch(request, clean.result)
        if mismatch:
            # The sender would be told that the instance it named is stored: refuse, keep nothing.
            log.warning("refused: the data set does not match its C-STORE request", attribute=mismatch,
                        calling_ae=calling_ae, peer=peer, status=f"0x{DATA_SET_DOES_NOT_MATCH:04X}")
            return DATA_SET_DOES_NOT_MATCH
        status = self._spool(clean, calling_ae, peer, started)
        metrics.DEIDENTIFY_SECONDS.observe(time.perf_counter() - started)
        return status

    def _spool(self, clean: CleanInstance, calling_ae: str, peer: str, started: float) -> int:
        result = clean.result
        routing = Routing(result.modality, result.sop_class_uid, calling_ae)
        excluded = routing.excluded_from(self.settings.destinations)
        counts = {(RECEIVED, ""): 1}
        counts.update({(FILTERED_COUNT, name): 1 for name in excluded})
        try:
            [(entry, _)] = self._persist([(clean, excluded)], result.pseudonyms, counts)
        except (StateError, OSError) as exc:
            return _not_persisted(clean.sop_instance_uid, exc)
        log.info("spooled", sop_instance_uid=clean.sop_instance_uid, entry_id=entry.id,
                 size=entry.size, calling_ae=calling_ae, peer=peer, duration_ms=_ms(started))
        metrics.RECEIVED.labels(calling_ae=calling_ae).inc()
        for name in excluded:
            log.info("filtered", sop_instance_uid=clean.sop_instance_uid, destination=name)
            metrics.FILTERED.labels(destination=name).inc()
        self.on_spooled(entry, excluded)
        return SUCCESS

    # --- several profiles: one copy per profile, each for its own destinations ---

    def _store_profiles(self, request: StoreRequest, source: str, peer: str, started: float) -> int:
        """De-identify once per profile the destinations use; a profile's failure quarantines
        only its copy. The answer is success when any copy is spooled, else as for one profile."""
        calling_ae = request.calling_ae
        original = Original(lambda: part10_header(request.sop_class_uid, request.sop_instance_uid,
                                                  request.transfer_syntax) + bytes(request.dataset))
        copies: list[tuple[Profile, CleanInstance]] = []
        failures: list[tuple[Profile, InstanceError]] = []
        for profile in self.profiles:
            try:
                clean = deidentify_received(request.dataset, request.transfer_syntax,
                                            profile.policy, self.secret, self.pixels)
            except Exception as exc:  # noqa: BLE001 - an engine bug must not lose the instance
                failures.append((profile, _quarantine_reason(exc)))
                continue
            mismatch = command_mismatch(request, clean.result)
            if mismatch:
                log.warning("refused: the data set does not match its C-STORE request",
                            attribute=mismatch, calling_ae=calling_ae, peer=peer,
                            status=f"0x{DATA_SET_DOES_NOT_MATCH:04X}")
                return DATA_SET_DOES_NOT_MATCH
            try:
                copies.append((profile, edited(clean, original, profile, self.settings.labels,
                                               self.secret)))
            except Exception as exc:  # noqa: BLE001
                failures.append((profile, _quarantine_reason(exc)))
        status = SUCCESS
        for names, error in _same_failures(failures):
            status = self._quarantine(original.data, source, calling_ae, error, names)
            if status == OUT_OF_RESOURCES:
                return status
        if copies:
            status = self._spool_copies(copies, calling_ae, peer, started)
        metrics.DEIDENTIFY_SECONDS.observe(time.perf_counter() - started)
        return status

    def _spool_copies(self, copies: list[tuple[Profile, CleanInstance]], calling_ae: str,
                      peer: str, started: float) -> int:
        """Each copy a spool entry, done (filtered) for every destination but its profile's."""
        first = copies[0][1].result
        routing = Routing(first.modality, first.sop_class_uid, calling_ae)
        destinations = self.settings.destinations
        excluded = routing.excluded_from(destinations)
        counts = {(RECEIVED, ""): 1}
        counts.update({(FILTERED_COUNT, name): 1 for name in excluded})
        pairs = unique_pairs([map_pairs(profile.name, clean) for profile, clean in copies])
        # Done for every destination but its profile's: a copy never reaches another's archive.
        spooling = [(clean, excluded | frozenset(d.name for d in destinations
                                                 if d.name not in profile.destinations))
                    for profile, clean in copies]
        try:
            published = self._persist(spooling, pairs, counts)
        except (StateError, OSError) as exc:
            return _not_persisted(first.sop_instance_uid, exc)
        for (profile, clean), (spooled, done) in zip(copies, published, strict=True):
            log.info("spooled", sop_instance_uid=clean.sop_instance_uid, entry_id=spooled.id,
                     size=spooled.size, profile=profile.name, calling_ae=calling_ae, peer=peer,
                     duration_ms=_ms(started))
            self.on_spooled(spooled, done)
        metrics.RECEIVED.labels(calling_ae=calling_ae).inc()
        for name in excluded:
            log.info("filtered", sop_instance_uid=first.sop_instance_uid, destination=name)
            metrics.FILTERED.labels(destination=name).inc()
        return SUCCESS

    def _persist(self, copies: list[tuple[CleanInstance, frozenset[str]]],
                 pairs: Iterable[Pseudonym], counts: dict[tuple[str, str], int]
                 ) -> list[tuple[SpoolEntry, frozenset[str]]]:
        """Each copy a spool entry, done for its destinations in ``done``.

        The map's new pairs (with the counts) are queued first and committed while the spool
        files are written, in one transaction with other associations' pairs. The files become
        entries only once both are durable: an instance answered with a failure status is never
        forwarded (the sender sends it again), so on failure everything staged is dropped and
        the counts taken back (the map's pairs stay: the instance sent again reuses them)."""
        mapped = self.store.record_later(pairs, counts)
        staged: list[tuple[StagedEntry, frozenset[str]]] = []

        def discard() -> None:
            for entry, _ in staged:
                with contextlib.suppress(OSError):
                    entry.discard()

        try:
            for clean, done in copies:
                staged.append((self.spool.stage(clean.chunks, clean.result.sop_class_uid,
                                                clean.transfer_syntax_uid,
                                                clean.sop_instance_uid), done))
        except (StateError, OSError):
            discard()
            with contextlib.suppress(StateError):
                mapped.wait()
                self._uncount(counts)
            raise
        try:
            mapped.wait()
        except StateError:
            discard()
            raise
        try:  # every row first: a restart must never send a copy where it is done
            self.deliveries.record((entry.id, name, FILTERED)
                                   for entry, done in staged for name in done)
            return [(entry.publish(), done) for entry, done in staged]
        except (StateError, OSError):
            discard()
            self._uncount(counts)
            raise

    def _uncount(self, counts: dict[tuple[str, str], int]) -> None:
        try:
            self.store.record([], {key: -value for key, value in counts.items()})
        except StateError as exc:
            log.warning("received count not corrected", error=type(exc).__name__)

    def _quarantine(self, data: bytes, source: str, calling_ae: str, error: InstanceError,
                    profiles: tuple[str, ...] = ()) -> int:
        context: dict[str, object] = {"received_by": "serve"}
        if profiles:
            context["profiles"] = list(profiles)
        try:
            record = self.quarantine.put(data, source, error, context)
            self.deliveries.count({(QUARANTINED, ""): 1}, durable=True)
        except (GatewayError, OSError) as exc:
            log.error("not persisted", calling_ae=calling_ae, error=type(exc).__name__,
                      status=f"0x{OUT_OF_RESOURCES:04X}")
            return OUT_OF_RESOURCES
        status = SUCCESS if self.settings.gateway.on_deidentify_failure == "accept" else error.status
        log.warning("quarantined", quarantine_id=record.id, calling_ae=calling_ae,
                    reason=error.reason, error=type(error).__name__, status=f"0x{status:04X}",
                    **({"profile": ",".join(profiles)} if profiles else {}))
        metrics.QUARANTINED.labels(reason=error.reason).inc()
        return status

    def listening(self) -> bool:
        return self.server is not None and self.server.listening()

    def active_associations(self) -> int:
        return self.server.active_associations() if self.server is not None else 0

    # --- the server ---

    def start(self) -> Server:
        g = self.settings.gateway
        rules = g.allowed_calling_aes
        config = ServerConfig(
            ae_title=g.ae_title, host=g.host, port=g.port, max_pdu=g.max_pdu,
            max_associations=g.max_associations, artim_timeout=g.artim_timeout,
            dimse_timeout=g.dimse_timeout, network_timeout=g.network_timeout,
            max_pending_connections=g.max_pending_connections,
            min_receive_rate_kib=g.min_receive_rate_kib, max_instance_mb=g.max_instance_mb,
            receive_memory_mb=g.receive_memory_mb,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            ssl_context=server_context(self.settings.tls) if self.settings.tls.enabled else None,
            calling_ae_allowed=lambda title, address, subject: caller_allowed(
                rules, title, address, subject),
            storage_sop_class=storage_sop_class,
            transfer_syntax_supported=transfer_syntax_supported,
        )
        self.server = Server(config, self.handle_store).start()
        return self.server

    def stop(self, timeout: float) -> None:
        """No new associations; stores in flight are answered (within ``timeout``), then every
        association is aborted."""
        if self.server is not None:
            self.server.stop(timeout)
