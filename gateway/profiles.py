"""Per-destination profiles at run time: one instance de-identified once per distinct profile.

Each profile is the engine with its own policy (one secret: pseudonyms, keyed UIDs and date
shifts agree across profiles), then its edits (``gateway.deid.edits``) with the values of
``{label.*}`` and ``{pseudonym.*}``, then the leak guard over every value the edits wrote. A
failure (leak, missing label, anything the engine refuses) is that profile's alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from gateway import logs
from gateway.deid import leaks
from gateway.deid.edits import (
    Edits,
    Encoded,
    apply_edits,
    apply_encoded,
    same_encoding,
    study_number,
)
from gateway.deid.elements import DEFLATED, PREAMBLE, deflate, file_meta, read_encoded
from gateway.deid.engine import (
    DUMMY_TEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PATIENT_ID,
    PATIENT_NAME,
    STUDY_INSTANCE_UID,
    Policy,
    Pseudonym,
)
from gateway.deidentify import CleanInstance
from gateway.errors import LeakDetected, unexpected_errors_as_malformed
from gateway.labels import LabelTable
from gateway.settings import DEFAULT_PROFILE, Settings

log = logs.get_logger("profiles")
PROFILE_KIND = "profile"  # map rows "<profile>\<patient key>" -> the profile's patient pseudonym


@dataclass(frozen=True)
class Profile:
    """What applying one profile needs: its policy, its edits and the destinations it feeds."""

    name: str
    policy: Policy
    edits: Edits
    destinations: frozenset[str]


def profiles_in_use(settings: Settings) -> list[Profile]:
    """The distinct profiles the destinations use, in the destinations' order."""
    return [
        Profile(name, settings.policy(name), settings.profile(name).edits,
                frozenset(d.name for d in settings.destinations if d.profile == name))
        for name in settings.used_profiles()
    ]


def plain(profiles: list[Profile]) -> bool:
    """Only the [deidentify] profile without edits: the receiving step works as it always did."""
    return len(profiles) <= 1 and all(p.name == DEFAULT_PROFILE and not p.edits for p in profiles)


class Original:
    """The received instance, read (at most once, and only when an edit needs it) for ``keep``,
    the label key and the identifiers the leak guard looks for."""

    def __init__(self, part10: Callable[[], bytes]) -> None:
        self._part10 = part10

    @cached_property
    def data(self) -> bytes:
        return self._part10()

    @cached_property
    def encoded(self) -> Encoded:
        return Encoded(read_encoded(self.data))

    @cached_property
    def dataset(self) -> Dataset:
        return dcmread(BytesIO(self.data), stop_before_pixels=True, force=True)

    @cached_property
    def identifiers(self) -> leaks.Identifiers:
        e = self.encoded
        return leaks.collect_identifiers(e.buffer, e.instance.elements, e.top, e.encodings)


def template_values(profile: str, clean: CleanInstance, original: Original, edits: Edits,
                    labels: LabelTable | None, secret: bytes) -> dict[str, str]:
    """The values of the template fields for this instance: pseudonyms and, if used, labels."""
    result = clean.result
    values = {
        "profile": profile,
        "pseudonym.patient_id": result.fact(PATIENT_ID),
        "pseudonym.study": study_number(secret, result.fact(STUDY_INSTANCE_UID)),
    }
    if labels is not None and edits.label_columns():
        values.update(labels.values(original.encoded.text(int(tag_for_keyword(labels.key) or 0))))
    return values


def edited(clean: CleanInstance, original: Original, profile: Profile, labels: LabelTable | None,
           secret: bytes) -> CleanInstance:
    """``clean`` with the profile's edits applied and guarded; unchanged without edits.

    Raises MissingLabel, LeakDetected (an edit or label brought an identifier back) or
    MalformedInstance.
    """
    if not profile.edits:
        return clean
    values = template_values(profile.name, clean, original, profile.edits, labels, secret)
    with unexpected_errors_as_malformed():
        output = Encoded(read_encoded(clean.data))
        if same_encoding(output.instance, original.encoded.instance):
            body, written = apply_encoded(output, original.encoded, profile.edits, values)
            data = _part10(clean, body)
        else:  # pixels decoded into another encoding: pydicom converts what keep copies
            data, written = _edited_by_pydicom(clean, original, profile.edits, values)
        # Values the gateway wrote itself identify nobody, even where the input carried them.
        own = _own_values(profile.policy) | {values["pseudonym.patient_id"].upper(),
                                             output.text(PATIENT_NAME).upper()}
        identifiers = leaks.identifiers_from(set(original.identifiers.values) - own)
        hits = identifiers.find_in(written)
        if hits:
            raise LeakDetected(f"identifying value in {', '.join(sorted(set(hits)))} "
                               f"(edits of profile {profile.name})")
    return CleanInstance(clean.result, data, clean.transfer_syntax_uid)


def _own_values(policy: Policy) -> set[str]:
    """What the engine writes itself (as its leak guard ignores them): dummies and fixed names."""
    patient = policy.patient
    values = {DUMMY_TEXT, "ANONYMOUS", patient.fixed_id, patient.fixed_name,
              policy.replacement_institution_name}
    return {v.upper() for v in values if v}


def _part10(clean: CleanInstance, body: list[bytes | memoryview]) -> bytes:
    syntax = clean.transfer_syntax_uid
    joined = b"".join(body)
    meta = file_meta(clean.result.sop_class_uid, clean.sop_instance_uid, syntax,
                     IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    return b"\x00" * PREAMBLE + b"DICM" + meta + (deflate(joined) if syntax == DEFLATED else joined)


def _edited_by_pydicom(clean: CleanInstance, original: Original, edits: Edits,
                       values: dict[str, str]) -> tuple[bytes, list[tuple[str, str]]]:
    output = dcmread(BytesIO(clean.data), force=True)
    written = apply_edits(output, original.dataset, edits, values)
    buffer = BytesIO()
    dcmwrite(buffer, output, enforce_file_format=True)
    return buffer.getvalue(), written


def map_pairs(profile: str, clean: CleanInstance) -> list[Pseudonym]:
    """The map's pairs of one profile's copy, with which profile saw the patient."""
    pairs = list(clean.result.pseudonyms)
    pairs.extend(Pseudonym(PROFILE_KIND, f"{profile}\\{p.original}", p.pseudonym)  # type: ignore[arg-type]
                 for p in clean.result.pseudonyms if p.kind == "patient")
    return pairs


def unique_pairs(groups: list[list[Pseudonym]]) -> list[Pseudonym]:
    """One pair per (kind, original) across profiles (the first profile's, which all share
    unless a profile maps patients differently: its own pseudonym is in its profile row)."""
    seen: set[tuple[str, str]] = set()
    pairs = []
    for group in groups:
        for pair in group:
            if (pair.kind, pair.original) not in seen:
                seen.add((pair.kind, pair.original))
                pairs.append(pair)
    return pairs



@dataclass(frozen=True)
class ProfileEdit:
    """A profile's edits as one step after ``deidentify_bytes`` (offline ``anonymize``)."""

    profile: Profile
    labels: LabelTable | None
    secret: bytes

    def __call__(self, clean: CleanInstance, data: bytes) -> CleanInstance:
        return edited(clean, Original(lambda: data), self.profile, self.labels, self.secret)


def profile_edit(settings: Settings, name: str) -> ProfileEdit:
    """KeyError for a profile that does not exist."""
    profile = Profile(name, settings.policy(name), settings.profile(name).edits,
                      frozenset(d.name for d in settings.destinations if d.profile == name))
    return ProfileEdit(profile, settings.labels, settings.require_secret())


_ACTION_WORDS = {"X": "remove", "Z": "empty", "D": "dummy value", "C": "clean", "U": "keyed UID",
                 "K": "keep"}


def _action_words(action: str) -> str:
    words = [_ACTION_WORDS.get(part, part) for part in action.split("/")]
    return " or ".join(words) + (" (by the IOD's type)" if len(words) > 1 else "")


def describe(settings: Settings, name: str) -> list[str]:
    """What ``profile show`` prints: the options, the patient, then one line per attribute the
    profile changes, keeps (by an option) or edits, edits last (they come after)."""
    chosen = settings.profile(name)
    d = chosen.deidentify
    policy = settings.policy(name)
    table = policy.profile
    lines = [f"profile {name}" + (" ([deidentify])" if name == DEFAULT_PROFILE else ""),
             f"options: {', '.join(d.options) or '(basic profile only)'}",
             f"patient: {d.patient.mode}" + (f" ({d.patient.table_file})"
                                            if d.patient.mode == "table" else ""),
             f"destinations: {', '.join(_destinations(settings, name)) or '(none)'}",
             ""]
    if "retain_long_modified_dates" in d.options:
        lines.insert(3, f"dates: shifted by {d.date_shift_min_days} to {d.date_shift_max_days} "
                        "days per patient")
    rows: dict[int, tuple[str, str]] = {}
    for tag, action in sorted(table.actions.items()):
        keyword = table.keywords.get(tag, "")
        rows[tag] = (keyword, _action_words(action))
    edits = chosen.edits
    extra: list[str] = []
    for target in edits.remove:
        _edit_row(rows, extra, target.tag, target.private, target.name, "remove (edit)")
    for target in edits.keep:
        _edit_row(rows, extra, target.tag, target.private, target.name, "keep original (edit)")
    for target, template in edits.set:
        _edit_row(rows, extra, target.tag, target.private, target.name, f"set {template!r} (edit)")
    for tag, (keyword, words) in rows.items():
        lines.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword:<40} {words}")
    lines.extend(extra)
    lines.append(f"private elements (other)                           "
                 f"{_action_words(table.private_action)}"
                 + (" (safe list kept)" if "retain_safe_private" in d.options else ""))
    lines.append(f"curves (50xx,xxxx)                                 {_action_words(table.curve_action)}")
    lines.append(f"overlay data and comments (60xx,3000/4000)         "
                 f"{_action_words(table.overlay_action)}")
    return lines


def _destinations(settings: Settings, name: str) -> list[str]:
    return [d.name for d in settings.destinations if d.profile == name]


def announce_keeps(profiles: list[Profile]) -> None:
    """The user's decisions to keep original values, logged at start-up by keyword."""
    for profile in profiles:
        if profile.edits.keep:
            log.info("profile keeps original values", profile=profile.name,
                     attributes=[t.name for t in profile.edits.keep])


def _edit_row(rows: dict[int, tuple[str, str]], extra: list[str], tag: int, private: bool,
              name: str, words: str) -> None:
    if private:
        extra.append(f"{name:<51} {words}")
    else:
        rows[tag] = (name, words)
