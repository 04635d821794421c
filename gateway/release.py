"""Releasing quarantine entries: each goes back the way it came.

- from the offline command: de-identified again into the folder it was meant for (or ``--to``);
- from the network: de-identified again into the spool, for every destination, or, when it
  failed under named profiles (``context.profiles``), once per profile, each copy for that
  profile's destinations only;
- a dead letter (already de-identified): back into the spool as it is, for its destination only
  (de-identifying it again would re-key its UIDs a second time).

A running gateway picks spool entries up at its next spool rescan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.anonymize import output_path, write_atomically
from gateway.deid.elements import read_encoded
from gateway.deid.engine import SOP_CLASS_UID
from gateway.deidentify import CleanInstance, deidentify_bytes
from gateway.errors import InstanceError, MalformedInstance, NotDicom
from gateway.quarantine import Quarantine, QuarantineRecord
from gateway.settings import DEFAULT_PROFILE, Settings
from gateway.spool import Spool
from gateway.state import NOT_ADDRESSED, Deliveries, PseudonymStore


def profiles_of(record: QuarantineRecord) -> list[str]:
    """The profiles an original was quarantined under by serve ("profile" in older records)."""
    if "profiles" in record.context:
        return [str(name) for name in record.context["profiles"]]
    return [str(record.context["profile"])] if "profile" in record.context else []


@dataclass
class Releaser:
    settings: Settings
    quarantine: Quarantine
    store: PseudonymStore
    deliveries: Deliveries

    def release(self, record: QuarantineRecord, to: Path | None = None) -> str:
        """Where the entry went; raises InstanceError (and records it) if it still fails."""
        data = self.quarantine.original(record.id)
        try:
            if record.context.get("dead_letter"):
                where = self._respool_dead_letter(data, str(record.context["destination"]))
            elif to is not None or "destination" in record.context:
                where = self._to_folder(data, to or Path(str(record.context["destination"])),
                                        str(record.context.get("profile", DEFAULT_PROFILE)))
            elif profiles_of(record):
                where = self._to_each_profile(record, data, profiles_of(record))
            else:
                where = self._to_spool(data)
        except NotDicom as exc:
            self._still_failing(record, MalformedInstance(str(exc)))
            raise MalformedInstance(str(exc)) from exc
        except InstanceError as exc:
            self._still_failing(record, exc)
            raise
        self.quarantine.remove(record.id)
        return where

    def _profile(self, data: bytes, name: str) -> CleanInstance:
        """``data`` de-identified with the profile ``name`` and its edits."""
        from gateway.profiles import profile_edit

        if name != DEFAULT_PROFILE and name not in self.settings.profiles:
            raise MalformedInstance(f"the profile {name!r} is no longer in the config")
        clean = deidentify_bytes(data, self.settings.policy(name), self.settings.require_secret(),
                                 self.settings.pixel_policy())
        return profile_edit(self.settings, name)(clean, data)

    def _to_each_profile(self, record: QuarantineRecord, data: bytes, names: list[str]) -> str:
        """A copy per profile the original failed under; when one still fails, the entry keeps
        only the profiles not yet released (a second release must not send a copy twice)."""
        released: list[str] = []
        for index, name in enumerate(names):
            try:
                released.append(self._to_profile_destinations(data, name))
            except (InstanceError, NotDicom):
                if released:
                    record.context.pop("profile", None)
                    record.context["profiles"] = names[index:]
                raise
        return "; ".join(released)

    def _to_profile_destinations(self, data: bytes, name: str) -> str:
        clean = self._profile(data, name)
        entry = Spool(self.settings.spool_dir).prepare().put(
            clean.data, clean.result.sop_class_uid, clean.transfer_syntax_uid)
        others = [d.name for d in self.settings.destinations if d.profile != name]
        self.deliveries.record((entry.id, other, NOT_ADDRESSED) for other in others)
        self.store.record(clean.result.pseudonyms)
        return f"spool (destinations of profile {name})"

    def _to_folder(self, data: bytes, folder: Path, profile: str = DEFAULT_PROFILE) -> str:
        clean = self._profile(data, profile)
        write_atomically(output_path(folder, clean), clean.data, durable=True)
        self.store.record(clean.result.pseudonyms)
        return str(folder)

    def _to_spool(self, data: bytes) -> str:
        clean = deidentify_bytes(data, self.settings.policy(), self.settings.require_secret(),
                                 self.settings.pixel_policy())
        Spool(self.settings.spool_dir).prepare().put(clean.data, clean.result.sop_class_uid,
                                                     clean.transfer_syntax_uid)
        self.store.record(clean.result.pseudonyms)
        return "spool (all destinations)"

    def _respool_dead_letter(self, data: bytes, destination: str) -> str:
        instance = read_encoded(data)
        entry = Spool(self.settings.spool_dir).prepare().put(
            data, instance.text(SOP_CLASS_UID), instance.transfer_syntax)
        others = [d.name for d in self.settings.destinations if d.name != destination]
        self.deliveries.record((entry.id, name, NOT_ADDRESSED) for name in others)
        return f"spool (destination {destination})"

    def _still_failing(self, record: QuarantineRecord, exc: InstanceError) -> None:
        context = dict(record.context)
        context["release_attempts"] = int(context.get("release_attempts", 0)) + 1
        self.quarantine.update(QuarantineRecord(
            id=record.id, time=record.time, source=record.source, reason=exc.reason,
            error_class=type(exc).__name__, message=str(exc), size=record.size, context=context,
        ))
