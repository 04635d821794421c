"""Forwarding: one queue and its sender threads per destination, fed from the spool (in the
forwarding process: ``gateway/forward_process.py``).

Each sender keeps one association open while work is queued (``gateway/net/requestor.py``, in the
sender's own thread), sends batches and releases the association when idle. For each instance it
proposes the stored transfer syntax and, when ``forward.convert`` and a conversion exists, a
second context with the native syntaxes it converts to (``gateway/syntaxes.py``; converted by
``gateway/transcode.py``): bytes go out as they were spooled when the archive takes the stored
syntax, converted in memory otherwise (and audited). Transient failures back off exponentially
with jitter; permanent refusals and instances past the retry age become dead letters in the
quarantine.

No head-of-line blocking: an instance whose C-STORE fails (the archive aborts, drops the
connection, does not answer, or answers 0xA7xx) gets a strike and goes to the back of the queue,
so the ones behind it go next. One that has struck out ``forward.max_attempts`` times while the
destination accepted others is a dead letter; a destination that takes nothing dead-letters
nothing this way (it is down, not the instance). A spool entry is deleted only when every
destination has it.
"""

from __future__ import annotations

import random
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

from gateway import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, logs, metrics
from gateway.errors import ConversionFailed, DeliveryRefused, GatewayError, MalformedInstance
from gateway.net.pdu import (
    CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    VERIFICATION,
    AssociationRejected,
    PeerTimeout,
    UpperLayerError,
)
from gateway.net.requestor import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    MAX_CONTEXTS,
    Association,
    Proposal,
    RequestorConfig,
    associate,
)
from gateway.net.tls import client_context
from gateway.quarantine import ORIGINAL, Quarantine
from gateway.settings import Destination, Settings
from gateway.spool import Spool, SpoolEntry
from gateway.state import DEAD, DEAD_LETTERED, FORWARDED, SENT, Deliveries
from gateway.syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    fallback_syntaxes,
    pad_deflated,
    syntax_name,
)

log = logs.get_logger("forward")

CONVERTED = "transfer syntax converted"  # the audit action
ALREADY_GONE = "already gone"  # released or purged meanwhile: done, though not sent
RESCAN_MIN_AGE = 10.0  # seconds: younger entries are still being registered by the receiver
TRANSIENT_STATUS_PREFIX = 0xA700  # 0xA7xx: out of resources, try again later
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})


class Outcome(Enum):
    SENT = "sent"
    TRANSIENT = "transient"  # try again later, not the instance's doing (no association, spool)
    FAILED = "failed"  # its C-STORE failed (abort, dropped, no answer, 0xA7xx): a strike
    REFUSED = "refused"  # never going to be accepted: dead letter


def classify_status(status: int | None) -> Outcome:
    if status is None:
        return Outcome.FAILED  # no response: timeout or abort
    if status == 0x0000 or status in WARNING_STATUSES:
        return Outcome.SENT
    if status & 0xFF00 == TRANSIENT_STATUS_PREFIX:
        return Outcome.FAILED
    return Outcome.REFUSED


@dataclass(frozen=True)
class Attempt:
    """One instance's C-STORE: how it went, why (a dead letter's reason when refused), and the
    (from, to) transfer syntaxes if it was converted."""

    outcome: Outcome
    why: str
    converted: tuple[str, str] | None = None


@dataclass
class Strikes:
    count: int
    accepted_before: int  # how many the destination had accepted at the first strike


def proposals(entry: SpoolEntry, convert: bool) -> tuple[Proposal, ...]:
    """The presentation contexts an instance needs: its stored transfer syntax and, when
    converting, one with the native syntaxes it converts to (never the stored one)."""
    sop_class, stored = entry.sop_class_uid, entry.transfer_syntax_uid
    targets = fallback_syntaxes(stored) if convert else ()
    return ((sop_class, (stored,)), (sop_class, targets)) if targets else ((sop_class, (stored,)),)


def sop_class_name(uid: str) -> str:
    """A SOP class's keyword (``CTImageStorage``), or its UID if unknown."""
    from pydicom.uid import UID  # for a refusal's reason: not loaded while all goes well

    return UID(uid).keyword or uid


class Dispatcher:
    """Knows which destinations still owe each spool entry; deletes entries all have."""

    def __init__(
        self, settings: Settings, spool: Spool, deliveries: Deliveries, quarantine: Quarantine
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.deliveries = deliveries
        self.names = frozenset(d.name for d in settings.destinations)
        self.queues = {d.name: SendQueue(settings.forward.convert) for d in settings.destinations}
        self.forwarders = [
            Forwarder(d, index, self.queues[d.name], settings, self, deliveries, quarantine)
            for d in settings.destinations for index in range(settings.forward.associations)
        ]
        self._remaining: dict[str, set[str]] = {}
        self._with_rows: set[str] = set()  # entries with delivery rows in the database
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._rescanner = threading.Thread(target=self._rescan_loop, name="spool-rescan",
                                           daemon=True)

    def start(self) -> None:
        self.recover()
        for forwarder in self.forwarders:
            forwarder.start()
        self._rescanner.start()

    def recover(self, min_age: float = 0.0) -> int:
        """Queue every spool entry some destination has not acknowledged; returns how many."""
        delivered = {name: self.deliveries.delivered(name) for name in self.names}
        queued = 0
        for entry_id in self.spool.ids():
            with self._lock:
                if entry_id in self._remaining:
                    continue
            entry = self.spool.load(self.spool.incoming / f"{entry_id}.dcm")
            if entry is None or entry.age < min_age:
                continue
            done = frozenset(n for n in self.names if entry_id in delivered[n])
            self.submit(entry, done)
            queued += 1
        return queued

    def submit(self, entry: SpoolEntry, done: frozenset[str]) -> None:
        """Queue ``entry`` for every destination not in ``done`` (delivered or filtered)."""
        remaining = sorted(self.names - done)
        with self._lock:
            if entry.id in self._remaining:
                return
            if remaining:
                # A set of its own: senders take names out of it (``delivered``) while this
                # still queues the entry for the others.
                self._remaining[entry.id] = set(remaining)
            if done:
                self._with_rows.add(entry.id)
        if not remaining:
            self._finish(entry.id)
            return
        for name in remaining:
            self.queues[name].submit(entry)

    def delivered(self, outcomes: list[tuple[str, str]], destination: str) -> None:
        """``destination`` is done with these entries ((entry_id, outcome) pairs).

        An entry every destination is done with leaves the spool; no row is needed for it. An
        entry others still owe gets a durable row, so a restart does not send it here again.
        """
        finished, unfinished = [], []
        with self._lock:
            for entry_id, outcome in outcomes:
                remaining = self._remaining.get(entry_id)
                if remaining is None:
                    continue
                remaining.discard(destination)
                if remaining:
                    unfinished.append((entry_id, destination, outcome))
                    self._with_rows.add(entry_id)
                else:
                    finished.append(entry_id)
        if unfinished:
            self.deliveries.record(unfinished)
        for entry_id in finished:
            self._finish(entry_id)

    def _finish(self, entry_id: str) -> None:
        self.spool.remove(entry_id)
        with self._lock:
            self._remaining.pop(entry_id, None)
            had_rows = entry_id in self._with_rows
            self._with_rows.discard(entry_id)
        if had_rows:
            self.deliveries.forget([entry_id])

    def _rescan_loop(self) -> None:
        while not self._stopping.wait(self.settings.forward.rescan_seconds):
            try:
                self.recover(min_age=RESCAN_MIN_AGE)
            except GatewayError as exc:
                log.warning("spool rescan failed; trying again later", error=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - released entries wait for this thread
                log.error("spool rescan failed unexpectedly; trying again later",
                          error=type(exc).__name__)

    def threads_alive(self) -> dict[str, bool]:
        """Each sender thread and the rescanner, by name: running or not (for health)."""
        threads: list[threading.Thread] = [*self.forwarders, self._rescanner]
        return {t.name: t.is_alive() for t in threads}

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for queue in self.queues.values():
            queue.stop()
        for forwarder in self.forwarders:
            forwarder.join(max(0.0, deadline - time.monotonic()))


class SendQueue:
    """One destination's instances waiting to be sent, shared by its senders, and the strikes
    of those whose C-STORE failed (in memory: a restart starts them afresh)."""

    def __init__(self, convert: bool = False) -> None:
        self.entries: deque[SpoolEntry] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.senders = 1  # set by the senders: how many share the queue
        self.convert = convert  # propose the syntaxes instances convert to
        self.accepted = 0  # instances the destination accepted since the start
        self.strikes: dict[str, Strikes] = {}  # entry id -> its strikes

    def submit(self, entry: SpoolEntry) -> None:
        with self.cond:
            self.entries.append(entry)
            self.cond.notify()

    def pending(self) -> int:
        with self.cond:
            return len(self.entries)

    def oldest_age(self) -> float:
        with self.cond:
            return max((e.age for e in self.entries), default=0.0)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def take(self, size: int) -> list[SpoolEntry]:
        """The next batch (lock held): at most ``size``, and a fair share when the senders could
        all be busy, so a short queue is spread over them rather than left to one."""
        size = max(1, min(size, len(self.entries) // self.senders))
        batch: list[SpoolEntry] = []
        contexts: set[Proposal] = set()
        while self.entries and len(batch) < size:
            needed = contexts.union(proposals(self.entries[0], self.convert))
            if len(needed) > MAX_CONTEXTS:
                break
            contexts = needed
            batch.append(self.entries.popleft())
        return batch

    def requeue(self, entries: list[SpoolEntry]) -> None:
        with self.cond:
            self.entries.extendleft(reversed(entries))
            self.cond.notify()

    def to_back(self, entry: SpoolEntry) -> None:
        """Behind everything queued: the ones behind it go first."""
        with self.cond:
            self.entries.append(entry)
            self.cond.notify()

    def strike(self, entry_id: str) -> tuple[int, bool]:
        """One more failed C-STORE of this entry: its strikes, and whether the destination has
        accepted another instance since its first."""
        with self.cond:
            strikes = self.strikes.setdefault(entry_id, Strikes(0, self.accepted))
            strikes.count += 1
            return strikes.count, self.accepted > strikes.accepted_before

    def accepted_one(self, entry_id: str) -> None:
        with self.cond:
            self.accepted += 1
            self.strikes.pop(entry_id, None)

    def forget(self, entry_id: str) -> None:
        with self.cond:
            self.strikes.pop(entry_id, None)


class Forwarder(threading.Thread):
    """One sender (one association at a time) for a destination; a destination has
    ``forward.associations`` of them, taking work from the same queue."""

    def __init__(
        self,
        destination: Destination,
        index: int,
        queue: SendQueue,
        settings: Settings,
        dispatcher: Dispatcher,
        deliveries: Deliveries,
        quarantine: Quarantine,
    ) -> None:
        super().__init__(name=f"forward-{destination.name}-{index}", daemon=True)
        self.destination = destination
        self.queue = queue
        queue.senders = settings.forward.associations
        self.settings = settings
        self.dispatcher = dispatcher
        self.deliveries = deliveries
        self.quarantine = quarantine
        self._assoc: Association | None = None
        self._contexts: frozenset[Proposal] = frozenset()
        self._failures = 0
        self._not_before = 0.0

    def run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._send_safely(batch)
        finally:
            self._release()

    def _next_batch(self) -> list[SpoolEntry] | None:
        """Wait for work (releasing an idle association); None when stopping."""
        forward, queue = self.settings.forward, self.queue
        while True:
            with queue.cond:
                if queue.stopping:
                    return None
                wait = self._not_before - time.monotonic()
                if queue.entries and wait <= 0:
                    return queue.take(forward.batch_size)
                timeout = wait if queue.entries else forward.idle_release_seconds
                idle = not queue.cond.wait(timeout) and not queue.entries
            if idle:  # outside the lock: the receiver's submit() must not wait for the archive
                self._release()  # give the archive its association back

    def _requeue(self, entries: list[SpoolEntry]) -> None:
        self.queue.requeue(entries)

    # --- sending ---

    def _send(self, batch: list[SpoolEntry]) -> None:
        sent: list[SpoolEntry] = []
        dead: list[SpoolEntry] = []
        converted: list[tuple[SpoolEntry, str, str]] = []
        for index, entry in enumerate(batch):
            if self.queue.stopping:
                self._requeue(batch[index:])
                break
            attempt = self._store(batch, entry)
            if attempt.outcome is Outcome.SENT:
                sent.append(entry)
                if attempt.why == ALREADY_GONE:
                    self.queue.forget(entry.id)
                else:
                    self.queue.accepted_one(entry.id)
                if attempt.converted:
                    converted.append((entry, *attempt.converted))
                continue
            outcome, why = attempt.outcome, attempt.why
            if outcome is Outcome.FAILED:
                struck_out = self._strike(entry, why)
                if struck_out is not None:
                    outcome, why = Outcome.REFUSED, struck_out
            elif outcome is Outcome.TRANSIENT and self._too_old(entry):
                outcome, why = Outcome.REFUSED, self._too_old_reason(why)
            if outcome is Outcome.REFUSED and self._dead_letter(entry, why):
                dead.append(entry)
                self.queue.forget(entry.id)
                continue
            if outcome is Outcome.FAILED:
                self.queue.to_back(entry)  # the ones behind it go next
                self._requeue(batch[index + 1:])
            else:
                self._requeue(batch[index:])
            self._back_off()
            break
        else:
            self._failures = 0
        self._drop_useless_association()
        self._record(sent, dead, converted)

    def _strike(self, entry: SpoolEntry, why: str) -> str | None:
        """Count a failed C-STORE; the dead letter's reason once the instance has failed
        ``max_attempts`` times while the destination took others (or is too old), else None."""
        strikes, others_accepted = self.queue.strike(entry.id)
        name = self.destination.name
        if strikes >= self.settings.forward.max_attempts and others_accepted:
            return f"{name} aborted or failed it {strikes} times while accepting others; last: {why}"
        if self._too_old(entry):
            return self._too_old_reason(why)
        log.warning("store failed; the instance goes to the back of the queue", destination=name,
                    sop_instance_uid=entry.sop_instance_uid, attempt=strikes, reason=why)
        return None

    def _too_old_reason(self, why: str) -> str:
        hours = self.settings.forward.max_retry_age_hours
        return f"{self.destination.name} did not take it within {hours:g} h; last: {why}"

    def _send_safely(self, batch: list[SpoolEntry]) -> None:
        try:
            self._send(batch)
        except Exception as exc:  # noqa: BLE001 - the sender must outlive any bug; the spool keeps all
            log.error("forwarding failed unexpectedly", destination=self.destination.name,
                      error=type(exc).__name__)
            self._release(abort=True)
            self._requeue(batch)  # unrecorded sends go again: at least once, never lost
            self._back_off()

    def _too_old(self, entry: SpoolEntry) -> bool:
        return entry.age > self.settings.forward.max_retry_age_hours * 3600

    def _store(self, batch: list[SpoolEntry], entry: SpoolEntry) -> Attempt:
        name = self.destination.name
        try:
            dataset = entry.dataset()
        except FileNotFoundError:
            return Attempt(Outcome.SENT, ALREADY_GONE)
        except MalformedInstance:
            return Attempt(Outcome.REFUSED, f"not sent to {name}: the spool file is not a "
                           "Part-10 file")
        except OSError:
            return Attempt(Outcome.TRANSIENT, "spool file unreadable")
        assoc = self._association(batch)
        if assoc is None:
            return Attempt(Outcome.TRANSIENT, "no association")
        stored = entry.transfer_syntax_uid
        syntax = self._syntax_for(assoc, entry)
        if syntax is None:
            return Attempt(Outcome.REFUSED, self._no_context_reason(assoc, entry))
        converted = None
        if syntax != stored:
            from gateway.transcode import convert  # pydicom and the codecs: only when converting

            try:
                dataset = memoryview(convert(dataset, stored, syntax))
            except ConversionFailed as exc:
                return Attempt(Outcome.REFUSED, f"{name} takes it only converted: {exc}")
            converted = (stored, syntax)
        elif stored == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            dataset = memoryview(pad_deflated(dataset))  # spooled before the engine padded it
        started = time.perf_counter()
        try:
            status: int | None = assoc.store(entry.sop_class_uid, entry.sop_instance_uid,
                                             syntax, dataset)
        except UpperLayerError as exc:  # the association is over (aborted and closed)
            self._release(abort=True)
            log.warning("association lost", destination=name, error=type(exc).__name__)
            if not isinstance(exc, PeerTimeout):
                return Attempt(Outcome.FAILED, f"association lost ({type(exc).__name__})")
            status = None
        outcome = classify_status(status)
        if outcome is Outcome.SENT:
            assert status is not None
            elapsed = time.perf_counter() - started
            metrics.FORWARD_SECONDS.labels(destination=name).observe(elapsed)
            log.info("forwarded", sop_instance_uid=entry.sop_instance_uid, destination=name,
                     status=f"0x{status:04X}", size=entry.size,
                     duration_ms=round(elapsed * 1000, 2))
            if converted:
                log.info("converted", sop_instance_uid=entry.sop_instance_uid, destination=name,
                         from_syntax=syntax_name(stored), to_syntax=syntax_name(syntax))
            return Attempt(outcome, "", converted)
        if status is None:
            return Attempt(outcome, "no response")
        if outcome is Outcome.REFUSED:
            return Attempt(outcome, f"{name} refused it: status 0x{status:04X}")
        return Attempt(outcome, f"status 0x{status:04X}")

    def _syntax_for(self, assoc: Association, entry: SpoolEntry) -> str | None:
        """The transfer syntax to send ``entry`` in: the stored one if the archive takes it,
        else the first it takes of those the entry converts to; None if neither."""
        sop_class, stored = entry.sop_class_uid, entry.transfer_syntax_uid
        candidates = (stored, *(fallback_syntaxes(stored) if self.queue.convert else ()))
        return next((s for s in candidates if assoc.accepts(sop_class, s)), None)

    def _no_context_reason(self, assoc: Association, entry: SpoolEntry) -> str:
        """What the archive took of what was proposed for the entry's SOP class, in words."""
        name, sop_class = self.destination.name, entry.sop_class_uid
        answered = [cx for cx in assoc.contexts if cx.sop_class_uid == sop_class]
        label = sop_class_name(sop_class)
        if answered and all(cx.result == CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED for cx in answered):
            return f"{name} does not accept this SOP class ({label})"
        wanted = [entry.transfer_syntax_uid]
        if self.queue.convert:
            wanted += fallback_syntaxes(entry.transfer_syntax_uid)
        reason = f"{name} accepts none of: {', '.join(map(syntax_name, wanted))} for {label}"
        others = sorted({cx.transfer_syntax for cx in answered if cx.accepted})
        if others:
            reason += f" (it accepted {', '.join(map(syntax_name, others))})"
        return reason

    def _association(self, batch: list[SpoolEntry]) -> Association | None:
        needed = frozenset(p for e in batch for p in proposals(e, self.queue.convert))
        current = self._assoc
        alive = current is not None and current.alive()
        if alive and needed <= self._contexts:
            return current
        self._release(abort=not alive)  # the peer ended it (or it never was), or new contexts
        assoc = self._open(needed)
        if assoc is None:
            return None
        self._assoc, self._contexts = assoc, needed
        return assoc

    def _open(self, contexts: frozenset[Proposal]) -> Association | None:
        """An association proposing ``contexts``; it may accept none of them (each instance
        then becomes a dead letter naming what the archive took)."""
        d = self.destination
        context, server_name = tls_args(self.settings, d) or (None, None)
        try:
            return associate(requestor_config(self.settings), d.host, d.port, d.ae_title,
                             sorted(contexts), context, server_name)
        except AssociationRejected as exc:
            log.warning("association rejected", destination=d.name, reason=exc.describe())
            return None
        except UpperLayerError as exc:
            # The message says what is wrong (refused, TLS certificate not accepted, ...).
            log.warning("no association", destination=d.name, error=type(exc).__name__,
                        detail=str(exc))
            return None

    def _drop_useless_association(self) -> None:
        """Release an association that accepts nothing: the next batch asks afresh."""
        if self._assoc is not None and not self._assoc.accepted:
            self._release()

    def _release(self, abort: bool = False) -> None:
        assoc, self._assoc = self._assoc, None
        self._contexts = frozenset()
        if assoc is None:
            return
        assoc.abort() if abort else assoc.release()

    def _back_off(self) -> None:
        forward = self.settings.forward
        self._failures += 1
        delay = min(forward.retry_max_seconds,
                    forward.retry_initial_seconds * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: restarted gateways don't retry in lockstep
        self._not_before = time.monotonic() + delay
        log.warning("retrying later", destination=self.destination.name, attempt=self._failures,
                    delay_s=round(delay, 2), pending=self.queue.pending())

    def _dead_letter(self, entry: SpoolEntry, why: str) -> bool:
        """Move the de-identified instance to quarantine (``why`` is its reason, naming the
        destination); False if that failed."""
        try:
            data = entry.path.read_bytes()
            error = DeliveryRefused(why)
            record = self.quarantine.put(data, f"forward to {self.destination.name}", error,
                                         {"destination": self.destination.name, "dead_letter": True},
                                         file_name=dead_letter_name(entry.sop_instance_uid))
        except (GatewayError, OSError) as exc:
            log.error("dead letter not persisted", destination=self.destination.name,
                      sop_instance_uid=entry.sop_instance_uid, error=type(exc).__name__)
            return False
        log.warning("dead-lettered", sop_instance_uid=entry.sop_instance_uid,
                    destination=self.destination.name, reason=why, quarantine_id=record.id)
        return True

    def _record(self, sent: list[SpoolEntry], dead: list[SpoolEntry],
                converted: list[tuple[SpoolEntry, str, str]]) -> None:
        if not sent and not dead:
            return
        name = self.destination.name
        self._audit_conversions(converted)
        self.deliveries.count({(FORWARDED, name): len(sent), (DEAD_LETTERED, name): len(dead)})
        metrics.FORWARDED.labels(destination=name).inc(len(sent))
        metrics.FORWARDED_BYTES.labels(destination=name).inc(sum(e.size for e in sent))
        metrics.DEAD_LETTERED.labels(destination=name).inc(len(dead))
        outcomes = [(e.id, SENT) for e in sent] + [(e.id, DEAD) for e in dead]
        try:
            self.dispatcher.delivered(outcomes, name)
        except GatewayError as exc:
            log.warning("deliveries not recorded; sent again after a restart", destination=name,
                        error=type(exc).__name__)


    def _audit_conversions(self, converted: list[tuple[SpoolEntry, str, str]]) -> None:
        """One audit row per converted instance, the batch's in one transaction."""
        name = self.destination.name
        rows = [(CONVERTED, f"destination={name} from={syntax_name(source)} "
                            f"to={syntax_name(target)} sop_instance_uid={entry.sop_instance_uid}")
                for entry, source, target in converted]
        try:
            self.deliveries.audit_many(rows)
        except GatewayError as exc:
            log.error("conversions not audited", destination=name, count=len(rows),
                      error=type(exc).__name__)


def requestor_config(settings: Settings) -> RequestorConfig:
    """The gateway's AE title, PDU size and timeouts, for its outbound associations."""
    g = settings.gateway
    return RequestorConfig(
        ae_title=g.ae_title, max_pdu=g.max_pdu, acse_timeout=g.acse_timeout,
        dimse_timeout=g.dimse_timeout, network_timeout=g.network_timeout,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )


def tls_args(settings: Settings, destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    if not destination.tls:
        return None
    return client_context(settings.tls), destination.tls_server_name or destination.host


def dead_letter_name(sop_instance_uid: str) -> str:
    """``<uid>.dcm``: a dead letter is de-identified, so its UID is the pseudonymous one and
    may name the file; ``original.dcm`` if the spool entry has no usable UID."""
    if re.fullmatch(r"[0-9][0-9.]{0,63}", sop_instance_uid):
        return f"{sop_instance_uid}.dcm"
    return ORIGINAL


def echo(settings: Settings, destination: Destination) -> int | None:
    """C-ECHO one destination; its status, or None if no association could be made."""
    return echo_explained(settings, destination)[0]


def echo_explained(settings: Settings, destination: Destination) -> tuple[int | None, str]:
    """C-ECHO one destination: its status (None: no association) and, without one, why."""
    context, server_name = tls_args(settings, destination) or (None, None)
    try:
        assoc = associate(requestor_config(settings), destination.host, destination.port,
                          destination.ae_title, [(VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)],
                          context, server_name)
    except AssociationRejected as exc:
        return None, f"association rejected ({exc.describe()})"
    except UpperLayerError as exc:
        return None, str(exc) or type(exc).__name__
    try:
        if not assoc.accepted:
            return None, "the archive accepts no Verification context"
        return assoc.echo(), ""
    except UpperLayerError as exc:
        return None, str(exc) or type(exc).__name__
    finally:
        assoc.release()
