"""Forwarding bookkeeping in the gateway's database: which destination has which spool entry,
and the running counts that ``status`` reports.

A delivery row is written after the archive acknowledged (or after a filter or dead-letter
decided): losing one in a crash means sending that instance again, never losing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String, delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.errors import StateError
from gateway.pseudonyms import WRITE_LOCK, Base, open_engine

SENT = "sent"
FILTERED = "filtered"
DEAD = "dead"
NOT_ADDRESSED = "not-addressed"  # a released dead letter goes to one destination only

# Counter names; destination "" is the gateway as a whole.
RECEIVED = "received"
QUARANTINED = "quarantined"
FORWARDED = "forwarded"
DEAD_LETTERED = "dead_lettered"
FILTERED_COUNT = "filtered"


class DeliveryRow(Base):
    __tablename__ = "deliveries"

    entry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CounterRow(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    destination: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    value: Mapped[int] = mapped_column(Integer, default=0)


class Deliveries:
    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def record(
        self,
        outcomes: Iterable[tuple[str, str, str]],
        counts: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Store (entry_id, destination, outcome) rows and add to counters, in one transaction."""
        now = datetime.now(UTC)
        try:
            with WRITE_LOCK, Session(self.engine) as session, session.begin():
                for entry_id, destination, outcome in outcomes:
                    session.merge(DeliveryRow(entry_id=entry_id, destination=destination,
                                              outcome=outcome, at=now))
                _add_counts(session, counts or {})
        except SQLAlchemyError as exc:
            raise StateError(f"cannot write delivery state ({type(exc).__name__})") from exc

    def count(self, counts: Mapping[tuple[str, str], int]) -> None:
        self.record((), counts)

    def delivered(self, destination: str) -> set[str]:
        with Session(self.engine) as session:
            rows = session.scalars(
                select(DeliveryRow.entry_id).where(DeliveryRow.destination == destination)
            )
            return set(rows)

    def destinations_done(self, entry_id: str) -> set[str]:
        with Session(self.engine) as session:
            rows = session.scalars(
                select(DeliveryRow.destination).where(DeliveryRow.entry_id == entry_id)
            )
            return set(rows)

    def forget(self, entry_ids: Iterable[str]) -> None:
        ids = list(entry_ids)
        if not ids:
            return
        with WRITE_LOCK, Session(self.engine) as session, session.begin():
            for start in range(0, len(ids), 500):
                session.execute(
                    delete(DeliveryRow).where(DeliveryRow.entry_id.in_(ids[start : start + 500]))
                )

    def counters(self) -> dict[tuple[str, str], int]:
        with Session(self.engine) as session:
            return {(r.name, r.destination): r.value for r in session.scalars(select(CounterRow))}


def _add_counts(session: Session, counts: Mapping[tuple[str, str], int]) -> None:
    for (name, destination), value in counts.items():
        if not value:
            continue
        updated = session.execute(
            update(CounterRow)
            .where(CounterRow.name == name, CounterRow.destination == destination)
            .values(value=CounterRow.value + value)
        )
        if not updated.rowcount:  # type: ignore[attr-defined]
            session.add(CounterRow(name=name, destination=destination, value=value))


def entry_created(entry_id: str) -> float:
    """Spool entry ids start with their creation time in nanoseconds."""
    try:
        return int(entry_id.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0


def status_report(
    deliveries: Deliveries, spool_ids: list[str], destinations: list[str], now: float
) -> dict[str, object]:
    """Counts since the database was made, and what each destination still has to receive."""
    counters = deliveries.counters()
    per_destination: dict[str, dict[str, object]] = {}
    for name in destinations:
        done = deliveries.delivered(name)
        pending = [i for i in spool_ids if i not in done]
        oldest = min((entry_created(i) for i in pending), default=None)
        per_destination[name] = {
            "pending": len(pending),
            "oldest_pending_age_seconds": None if oldest is None else round(now - oldest, 3),
            "forwarded": counters.get((FORWARDED, name), 0),
            "dead_lettered": counters.get((DEAD_LETTERED, name), 0),
            "filtered": counters.get((FILTERED_COUNT, name), 0),
        }
    return {
        "received": counters.get((RECEIVED, ""), 0),
        "forwarded": sum(counters.get((FORWARDED, n), 0) for n in destinations),
        "quarantined": counters.get((QUARANTINED, ""), 0),
        "dead_lettered": sum(counters.get((DEAD_LETTERED, n), 0) for n in destinations),
        "pending": sum(int(d["pending"]) for d in per_destination.values()),  # type: ignore[call-overload]
        "destinations": per_destination,
    }
