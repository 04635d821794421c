"""One frozen, validated settings object, read from TOML at start-up.

Every error names the key it is about and says how to fix it. Relative paths are taken from the
working directory, as the command line does. The secret comes from ``gateway.secret_file`` or the
environment variable ``DICOM_GATEWAY_SECRET``; it never appears in ``repr`` or logs.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.deid.private import SafePrivateList, parse_user_list, standard_safe_private
from gateway.deid.profile import build_profile
from gateway.deid.uids import DEFAULT_ROOT, MAX_UID_LENGTH
from gateway.deid.vocabulary import load_user_words
from gateway.errors import ConfigError, SecretError, StateError
from gateway.files import write_private
from gateway.labels import MISSING_CHOICES, LabelTable, read_label_rows

# The engine's modules, and pydicom with them, are imported where they are used: the forwarding
# process reads these settings too, and never loads what it does not need (memory).
if TYPE_CHECKING:
    from gateway.deid.edits import Edits, Target
    from gateway.deid.engine import Policy
    from gateway.pixels.policy import PixelPolicy
    from gateway.pixels.rules import RuleSet

SECRET_ENV = "DICOM_GATEWAY_SECRET"
MIN_SECRET_BYTES = 16
SECRET_BYTES = 32
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable ASCII but backslash
_UID_ROOT = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
T = TypeVar("T")
DEFAULT_PROFILE = "default"  # the profile [deidentify] describes


class Secret:
    """The gateway's key; prints as a mask so it cannot reach a log by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    # Routing filters: empty means every instance; otherwise the instance must match each.
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    calling_aes: tuple[str, ...] = ()

    tls: bool = False  # forward over TLS, verifying the archive with [tls].ca_certificates
    tls_server_name: str = ""  # name in the archive's certificate; default: host
    profile: str = DEFAULT_PROFILE  # the de-identification profile of its copies


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False  # serve TLS on gateway.port (plain associations are then refused)
    certificate: Path | None = None  # PEM; also the client certificate towards TLS archives
    private_key: Path | None = None
    ca_certificates: Path | None = None  # PEM bundle trusted for peers' certificates
    require_client_certificate: bool = False


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"  # debug, info, warning, error
    format: str = "auto"  # auto: JSON lines unless standard error is a terminal; json; console


@dataclass(frozen=True)
class MetricsSettings:
    address: str = ""  # host:port for Prometheus /metrics; empty: off


@dataclass(frozen=True)
class WebSettings:
    address: str = ""  # host:port for the web console; empty: off


@dataclass(frozen=True)
class CallerRule:
    """An allowed calling AE title, optionally only from one host address, or only with a TLS
    client certificate whose subject holds the given attributes."""

    ae_title: str
    address: str | None = None
    # (OpenSSL's long attribute name, value) pairs, as ssl.getpeercert() names them
    certificate_subject: tuple[tuple[str, str], ...] = ()


# The subject attributes a rule may name ("PACS@cert:CN=pacs.example.org,O=Hospital"), by the
# short names of RFC 4514 and certificates, and the long names ssl.getpeercert() gives them.
SUBJECT_ATTRIBUTES = {
    "CN": "commonName", "O": "organizationName", "OU": "organizationalUnitName",
    "C": "countryName", "L": "localityName", "ST": "stateOrProvinceName",
    "DC": "domainComponent", "EMAILADDRESS": "emailAddress", "SERIALNUMBER": "serialNumber",
}


MAX_NICE = 19  # the lowest priority Unix has


@dataclass(frozen=True)
class ForwardSettings:
    associations: int = 2  # per destination, sending at once (an archive answers one at a time)
    batch_size: int = 100  # instances sent on one association before looking for more work
    idle_release_seconds: float = 5.0  # release the association after this long without work
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    max_retry_age_hours: float = 168.0  # older undeliverable instances become dead letters
    # An instance the archive aborts on or refuses with a transient status this many times,
    # while it takes others, is a dead letter: it must not hold up the instances behind it.
    max_attempts: int = 5
    # Offer the archive the native transfer syntaxes an instance converts to without loss
    # (and decompressed ones, when a decoder is installed) besides the stored one.
    convert: bool = True
    rescan_seconds: float = 30.0  # look for spool entries added by others (released dead letters)
    # How much lower the forwarding process's CPU priority is than receiving's (a Unix nice
    # increment): senders wait for each answer, forwarding only has to catch up. Measured
    # with four associations on two cores: 13% more instances/s with no later arrivals.
    nice: int = 10


@dataclass(frozen=True)
class GatewaySettings:
    ae_title: str = "DICOM_GW"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aes: tuple[CallerRule, ...] = ()
    data_dir: Path = Path("var")
    database_url: str = ""
    secret_file: Path | None = None
    max_associations: int = 10
    max_pdu: int = 0  # 0: unlimited
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    # A connection must send its A-ASSOCIATE-RQ within this (the ARTIM timer, PS3.8 9.1.5).
    artim_timeout: float = 10.0
    # Connections not yet associated at once; beyond it the oldest is closed for the newest.
    max_pending_connections: int = 32
    # A message may take longer than dimse_timeout while the sender keeps this rate (KiB/s).
    min_receive_rate_kib: int = 64
    # Largest instance received (MB); a larger one is refused with 0xA700 before it is held.
    max_instance_mb: int = 2048
    # Data sets held in memory at once across associations (MB); beyond it 0xA700.
    receive_memory_mb: int = 4096
    # What the sender hears when an instance cannot be de-identified (it is quarantined
    # either way): "accept" answers success so the sender does not retry forever.
    on_deidentify_failure: str = "accept"


@dataclass(frozen=True)
class PatientSettings:
    mode: str = "hash"
    prefix: str = "ANON"
    table_file: Path | None = None
    fixed_id: str = "ANONYMOUS"
    fixed_name: str = "ANONYMOUS"
    table: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DeidentifySettings:
    options: tuple[str, ...] = ()
    uid_root: str = DEFAULT_ROOT
    strict: bool = False
    trust_deidentified: bool = False
    quarantine_burned_in_annotation: bool = True
    safe_private_file: Path | None = None
    replacement_institution_name: str = ""
    clean_words_file: Path | None = None
    clean_words: frozenset[str] = field(default=frozenset(), repr=False)
    date_shift_min_days: int = 1
    date_shift_max_days: int = 365
    patient: PatientSettings = PatientSettings()
    user_safe_private: SafePrivateList = field(
        default=SafePrivateList(frozenset()), repr=False
    )


@dataclass(frozen=True)
class ProfileSettings:
    """A named profile: [deidentify] with its own keys, and the edits applied after it."""

    name: str
    deidentify: DeidentifySettings
    edits: Edits = field(default_factory=lambda: _no_edits())


def _no_edits() -> Edits:
    from gateway.deid.edits import Edits

    return Edits()


def _no_rules() -> RuleSet:
    from gateway.pixels.rules import RuleSet

    return RuleSet((), "")


PIXEL_UNMATCHED = ("quarantine", "ocr", "pass")


@dataclass(frozen=True)
class PixelSettings:
    """``[pixels]``: burned-in text removal for instances at risk of carrying it."""

    rules_file: Path | None = None
    unmatched: str = "quarantine"  # at-risk instance that no rule matches
    fill: int = 0
    rules: RuleSet = field(default_factory=lambda: _no_rules(), repr=False)


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySettings
    destinations: tuple[Destination, ...]
    deidentify: DeidentifySettings
    forward: ForwardSettings = ForwardSettings()
    tls: TlsSettings = TlsSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    pixels: PixelSettings | None = None  # None: no [pixels] section, no pixel cleaning
    profiles: Mapping[str, ProfileSettings] = field(default_factory=dict)  # the named ones
    labels: LabelTable | None = None
    secret: Secret | None = None
    source: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.gateway.data_dir

    @property
    def database_url(self) -> str:
        if self.gateway.database_url:
            return self.gateway.database_url
        return f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    def prepare_data_dir(self) -> None:
        """Create the data folder private (0700): it holds the map and the quarantine."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.data_dir, 0o700)
        except OSError as exc:
            raise StateError(f"gateway.data_dir: cannot use {self.data_dir} ({exc.strerror})") \
                from exc

    def require_secret(self) -> bytes:
        if self.secret is None:
            raise SecretError(
                "no secret key: run `dicom-gateway init-secret var/secret.key` and set "
                f'gateway.secret_file = "var/secret.key" in the config, or set {SECRET_ENV}'
            )
        return self.secret.reveal()

    def pixel_policy(self) -> PixelPolicy | None:
        """How burned-in text is removed (None: no [pixels] section)."""
        from gateway.pixels.policy import PixelPolicy

        p = self.pixels
        if p is None:
            return None
        return PixelPolicy(rules=p.rules, unmatched=p.unmatched, fill=p.fill)  # type: ignore[arg-type]

    def profile(self, name: str = DEFAULT_PROFILE) -> ProfileSettings:
        """A profile by name; ``default`` is [deidentify] (KeyError for an unknown name)."""
        if name == DEFAULT_PROFILE:
            return ProfileSettings(DEFAULT_PROFILE, self.deidentify)
        return self.profiles[name]

    def used_profiles(self) -> tuple[str, ...]:
        """The profiles the destinations use, each once, in the destinations' order."""
        return tuple(dict.fromkeys(d.profile for d in self.destinations))

    def policy(self, profile: str = DEFAULT_PROFILE) -> Policy:
        """The de-identification policy of a profile (for the pure engine)."""
        from gateway.deid.engine import PatientPolicy, Policy

        d = self.profile(profile).deidentify
        safe = standard_safe_private().union(d.user_safe_private)
        return Policy(
            profile=build_profile(d.options),
            patient=PatientPolicy(
                mode=d.patient.mode,  # type: ignore[arg-type]
                prefix=d.patient.prefix,
                table=d.patient.table,
                fixed_id=d.patient.fixed_id,
                fixed_name=d.patient.fixed_name,
            ),
            uid_root=d.uid_root,
            date_shift_min_days=d.date_shift_min_days,
            date_shift_max_days=d.date_shift_max_days,
            trust_deidentified=d.trust_deidentified,
            strict=d.strict,
            # With [pixels], pixel cleaning decides what happens to burned-in annotation.
            quarantine_burned_in_annotation=d.quarantine_burned_in_annotation and self.pixels is None,
            safe_private=safe,
            replacement_institution_name=d.replacement_institution_name,
            clean_words=d.clean_words,
        )


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One configuration mistake: its key, what is wrong and the fix, and the key's line."""

    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigProblems(ConfigError):
    """Every mistake found in a settings file at once, not only the first (one a line)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


_KEY_PREFIX = re.compile(r"([A-Za-z_][\w.\[\]-]*)(?:/[\w.\[\]-]+)?: ")


def as_problem(error: ConfigError) -> Problem:
    """The key a ConfigError's message starts with, and the rest of the message."""
    text = str(error)
    match = _KEY_PREFIX.match(text)
    if match is None:
        return Problem("config", text)
    return Problem(match.group(1), text[match.end():])


class _Section:
    """A TOML table being read: typed getters that name the full key on error.

    A wrong value is recorded in ``problems`` (shared by a file's sections) and its default
    used, so that reading goes on and every mistake is reported at once.
    """

    def __init__(self, data: Mapping[str, Any], prefix: str,
                 problems: list[ConfigError] | None = None) -> None:
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()
        self.problems: list[ConfigError] = [] if problems is None else problems

    def report(self, error: ConfigError) -> None:
        self.problems.append(error)

    def attempt(self, read: Callable[[], T], default: T) -> T:
        """``read()``, or ``default`` with its error recorded."""
        try:
            return read()
        except ConfigError as exc:
            self.report(exc)
            return default

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type[T], default: T) -> T:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            self.report(ConfigError(
                f"{self.key(name)}: expected {_kind_name(kind)}, got {type(value).__name__} "
                f"({value!r})"
            ))
            return default
        return value

    def section(self, name: str) -> _Section:
        table = self.get(name, dict, {})
        return _Section(table, self.key(name), self.problems)

    def finish(self, known_sections: tuple[str, ...] = ()) -> None:
        """Reject keys that nothing read: a typo should fail, not be silently ignored."""
        for name in self.data:
            if name not in self.used and name not in known_sections:
                choices = sorted(self.used | set(known_sections))
                close = difflib.get_close_matches(name, choices, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {choices}"
                self.report(ConfigError(f"{self.key(name)}: unknown key{hint}"))


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list",
            dict: "a table"}.get(kind, kind.__name__)


def _ae_title(value: str, key: str) -> str:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ConfigError(
            f"{key}: {value!r} is not a valid AE title (1-16 printable ASCII characters, "
            "no backslash)"
        )
    return value.strip()


def _caller_rule(value: str, key: str) -> CallerRule:
    """``"AE"``, ``"AE@host"`` (a host name is resolved once, at start-up) or
    ``"AE@cert:CN=name,O=org"``."""
    title, _, host = value.partition("@")
    ae = _ae_title(title, key)
    if not host:
        return CallerRule(ae)
    if host.startswith("cert:"):
        return CallerRule(ae, certificate_subject=_certificate_subject(host[len("cert:"):], key))
    try:
        address = socket.gethostbyname(host.strip())
    except OSError as exc:
        raise ConfigError(f"{key}: cannot resolve host {host!r} ({exc})") from exc
    return CallerRule(ae, address)


def _certificate_subject(text: str, key: str) -> tuple[tuple[str, str], ...]:
    """``"CN=pacs.example.org,O=Hospital"`` as getpeercert()'s (long name, value) pairs."""
    pairs = []
    for part in text.split(","):
        name, equals, value = part.partition("=")
        attribute = SUBJECT_ATTRIBUTES.get(name.strip().upper())
        if not equals or not value.strip() or attribute is None:
            raise ConfigError(
                f"{key}: {part.strip()!r} is not an attribute of a certificate subject; write "
                f"'cert:' then NAME=value pairs separated by commas, NAME one of "
                f"{', '.join(sorted(SUBJECT_ATTRIBUTES))} (e.g. 'PACS@cert:CN=pacs.example.org')")
        pairs.append((attribute, value.strip()))
    return tuple(pairs)


def _port(value: int, key: str) -> int:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{key}: port {value} is out of range; use 1-65535")
    return value


def _optional_path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None


def _caller_rules(section: _Section, allowed: list[Any]) -> tuple[CallerRule, ...]:
    rules = []
    for index, value in enumerate(allowed):
        key = section.key(f"allowed_calling_aes[{index}]")
        try:
            rules.append(_caller_rule(_string_item(value, key), key))
        except ConfigError as exc:
            section.report(exc)
    return tuple(rules)


def _read_gateway(section: _Section) -> GatewaySettings:
    allowed = section.get("allowed_calling_aes", list, [])
    titles = _caller_rules(section, allowed)
    on_failure = section.get("on_deidentify_failure", str, "accept")
    if on_failure not in ("accept", "refuse"):
        section.report(ConfigError(
            f"{section.key('on_deidentify_failure')}: {on_failure!r} is not 'accept' "
            "(answer success, keep the original in quarantine) or 'refuse' (failure status)"
        ))
        on_failure = "accept"
    result = GatewaySettings(
        ae_title=section.attempt(lambda: _ae_title(section.get("ae_title", str, "DICOM_GW"),
                                                   section.key("ae_title")), "DICOM_GW"),
        host=section.get("host", str, "127.0.0.1"),
        port=section.attempt(lambda: _port(section.get("port", int, 11112), section.key("port")),
                             11112),
        allowed_calling_aes=titles,
        data_dir=Path(section.get("data_dir", str, "var")).expanduser(),
        database_url=section.get("database_url", str, ""),
        secret_file=_optional_path(section.get("secret_file", str, "")),
        max_associations=_positive(section, "max_associations", int, 10),
        max_pdu=_at_least(section, "max_pdu", 0, 0),
        acse_timeout=_seconds(section, "acse_timeout", 30.0),
        dimse_timeout=_seconds(section, "dimse_timeout", 60.0),
        network_timeout=_seconds(section, "network_timeout", 120.0),
        artim_timeout=_seconds(section, "artim_timeout", 10.0),
        max_pending_connections=_positive(section, "max_pending_connections", int, 32),
        min_receive_rate_kib=_at_least(section, "min_receive_rate_kib", 0, 64),
        max_instance_mb=_positive(section, "max_instance_mb", int, 2048),
        receive_memory_mb=_positive(section, "receive_memory_mb", int, 4096),
        on_deidentify_failure=on_failure,
    )
    section.finish()
    return result


def _number(section: _Section, name: str, default: float) -> float:
    value = section.get(name, object, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        section.report(ConfigError(f"{section.key(name)}: expected a number, got {value!r}"))
        return default
    return float(value)


def _seconds(section: _Section, name: str, default: float) -> float:
    value = _number(section, name, default)
    if value <= 0:
        section.report(ConfigError(f"{section.key(name)}: must be more than 0 seconds"))
        return default
    return value


def _positive(section: _Section, name: str, kind: type[int], default: int) -> int:
    value = section.get(name, kind, default)
    if value < 1:
        section.report(ConfigError(f"{section.key(name)}: must be 1 or more"))
        return default
    return value


def _at_least(section: _Section, name: str, minimum: int, default: int) -> int:
    value = section.get(name, int, default)
    if value < minimum:
        section.report(ConfigError(f"{section.key(name)}: must be {minimum} or more"))
        return default
    return value


def _readable_file(section: _Section, name: str) -> Path | None:
    path = _optional_path(section.get(name, str, ""))
    if path is not None and not path.is_file():
        section.report(ConfigError(f"{section.key(name)}: {path} is not a readable file"))
        return None
    return path


def _read_tls(section: _Section) -> TlsSettings:
    result = TlsSettings(
        enabled=section.get("enabled", bool, False),
        certificate=_readable_file(section, "certificate"),
        private_key=_readable_file(section, "private_key"),
        ca_certificates=_readable_file(section, "ca_certificates"),
        require_client_certificate=section.get("require_client_certificate", bool, False),
    )
    if result.enabled and (result.certificate is None or result.private_key is None):
        raise ConfigError(f"{section.key('enabled')}: serving TLS needs tls.certificate and "
                          "tls.private_key (PEM files)")
    if result.require_client_certificate and result.ca_certificates is None:
        raise ConfigError(f"{section.key('require_client_certificate')}: needs "
                          "tls.ca_certificates to verify the clients' certificates")
    section.finish()
    return result


def _read_logging(section: _Section) -> LoggingSettings:
    level = section.get("level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{section.key('level')}: {level!r} is not one of debug, info, "
                          "warning, error")
    fmt = section.get("format", str, "auto").lower()
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"{section.key('format')}: {fmt!r} is not one of auto, json, console")
    section.finish()
    return LoggingSettings(level, fmt)


def _read_metrics(section: _Section) -> MetricsSettings:
    address = section.get("address", str, "")
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{section.key('address')}: {address!r} is not host:port, "
                              'e.g. "127.0.0.1:9110"; empty turns metrics off')
    section.finish()
    return MetricsSettings(address)


def _read_web(section: _Section) -> WebSettings:
    address = section.get("address", str, "")
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{section.key('address')}: {address!r} is not host:port, "
                              'e.g. "127.0.0.1:8080"; empty turns the web console off')
    section.finish()
    return WebSettings(address)


def _read_forward(section: _Section) -> ForwardSettings:
    result = ForwardSettings(
        associations=_positive(section, "associations", int, 2),
        batch_size=_positive(section, "batch_size", int, 100),
        idle_release_seconds=_seconds(section, "idle_release_seconds", 5.0),
        retry_initial_seconds=_seconds(section, "retry_initial_seconds", 1.0),
        retry_max_seconds=_seconds(section, "retry_max_seconds", 300.0),
        max_retry_age_hours=_seconds(section, "max_retry_age_hours", 168.0),
        rescan_seconds=_seconds(section, "rescan_seconds", 30.0),
        max_attempts=_positive(section, "max_attempts", int, 5),
        convert=section.get("convert", bool, True),
        nice=section.get("nice", int, 10),
    )
    if not 0 <= result.nice <= MAX_NICE:
        raise ConfigError(f"{section.key('nice')}: must be 0 to {MAX_NICE}")
    if result.retry_max_seconds < result.retry_initial_seconds:
        raise ConfigError(
            f"{section.key('retry_max_seconds')}: must not be less than retry_initial_seconds"
        )
    section.finish()
    return result


def _string_list(section: _Section, name: str) -> tuple[str, ...]:
    return tuple(
        _string_item(v, section.key(f"{name}[{i}]"))
        for i, v in enumerate(section.get(name, list, []))
    )


def _string_item(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _read_destinations(items: list[Any], root: _Section) -> tuple[Destination, ...]:
    """Each destination read on its own: a mistake in one does not hide those of the next."""
    destinations = []
    names: set[str] = set()
    for index, raw in enumerate(items):
        prefix = f"destinations[{index}]"
        if not isinstance(raw, dict):
            root.report(ConfigError(f"{prefix}: expected a table ([[destinations]])"))
            continue
        section = _Section(raw, prefix, root.problems)
        destination = section.attempt(lambda: _read_destination(section, names), None)  # noqa: B023
        if destination is not None:
            destinations.append(destination)
    return tuple(destinations)


def _read_destination(section: _Section, names: set[str]) -> Destination:
    prefix, raw = section.prefix, section.data
    name = section.get("name", str, "")
    if not name:
        raise ConfigError(f"{prefix}.name: every destination needs a unique name")
    if name in names:
        raise ConfigError(f"{prefix}.name: {name!r} is used twice; names must be unique")
    names.add(name)
    if "ae_title" not in raw:
        raise ConfigError(f"{prefix}.ae_title: missing; give the archive's AE title")
    ae_title = section.attempt(
        lambda: _ae_title(section.get("ae_title", str, ""), section.key("ae_title")), "")
    port = section.attempt(lambda: _port(section.get("port", int, 104), section.key("port")), 104)
    destination = Destination(
        name=name,
        ae_title=ae_title,
        host=section.get("host", str, "127.0.0.1"),
        port=port,
        modalities=tuple(m.upper() for m in _string_list(section, "modalities")),
        tls=section.get("tls", bool, False),
        tls_server_name=section.get("tls_server_name", str, ""),
        sop_classes=_string_list(section, "sop_classes"),
        calling_aes=_string_list(section, "calling_aes"),
        profile=section.get("profile", str, "") or DEFAULT_PROFILE,
    )
    section.finish()
    return destination


def _read_patient(section: _Section) -> PatientSettings:
    mode = section.get("mode", str, "hash")
    if mode not in ("hash", "table", "fixed"):
        raise ConfigError(f"{section.key('mode')}: {mode!r} is not one of 'hash', 'table', 'fixed'")
    table_file = _optional_path(section.get("table_file", str, ""))
    table: dict[str, str] = {}
    if mode == "table":
        if table_file is None:
            raise ConfigError(
                f"{section.key('table_file')}: mode 'table' needs a CSV file of "
                "original PatientID,subject ID rows"
            )
        table = read_patient_table(table_file, section.key("table_file"))
    prefix = section.get("prefix", str, "ANON")
    if len(prefix) > 48:
        raise ConfigError(f"{section.key('prefix')}: at most 48 characters (PatientID is LO, 64)")
    result = PatientSettings(
        mode=mode,
        prefix=prefix,
        table_file=table_file,
        fixed_id=section.get("fixed_id", str, "ANONYMOUS"),
        fixed_name=section.get("fixed_name", str, "ANONYMOUS"),
        table=table,
    )
    section.finish()
    return result


def read_patient_table(path: Path, key: str) -> dict[str, str]:
    """CSV rows ``original PatientID,subject ID``; an optional header row is skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from exc
    table: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2 or not cells[1]:
            raise ConfigError(f"{key}: {path} line {number}: expected 'PatientID,subject ID'")
        if number == 1 and cells[0].lower().replace(" ", "") in ("patientid", "original"):
            continue
        table[cells[0]] = cells[1]
    return table


def _read_deidentify(section: _Section) -> DeidentifySettings:
    options = section.get("options", list, [])
    option_keys = tuple(
        _string_item(v, section.key(f"options[{i}]")) for i, v in enumerate(options)
    )
    try:
        build_profile(option_keys)  # validates names and combinations, naming the key
    except ConfigError as exc:  # it names them as [deidentify]'s; a profile's are its own
        raise ConfigError(str(exc).replace("deidentify.options", section.key("options"), 1)) \
            from exc
    uid_root = section.get("uid_root", str, "") or DEFAULT_ROOT
    if not _UID_ROOT.fullmatch(uid_root) or len(uid_root) > MAX_UID_LENGTH - 20:
        raise ConfigError(
            f"{section.key('uid_root')}: {uid_root!r} is not a UID root (digits and dots, "
            f"no leading zeros, at most {MAX_UID_LENGTH - 20} characters); empty means 2.25"
        )
    safe_file = _optional_path(section.get("safe_private_file", str, ""))
    user_safe = SafePrivateList(frozenset())
    if safe_file is not None:
        key = section.key("safe_private_file")
        try:
            lines = safe_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {safe_file} ({exc.strerror})") from exc
        user_safe = parse_user_list(lines, f"{key} ({safe_file})")
    words_file = _optional_path(section.get("clean_words_file", str, ""))
    words = frozenset() if words_file is None else _read_clean_words(
        words_file, section.key("clean_words_file"))
    dates = section.section("dates")
    min_days = dates.get("shift_min_days", int, 1)
    max_days = dates.get("shift_max_days", int, 365)
    if not 0 <= min_days <= max_days <= 36500:
        raise ConfigError(
            f"{dates.key('shift_min_days')}/{dates.key('shift_max_days')}: need "
            "0 <= shift_min_days <= shift_max_days <= 36500"
        )
    dates.finish()
    result = DeidentifySettings(
        options=option_keys,
        uid_root=uid_root,
        strict=section.get("strict", bool, False),
        trust_deidentified=section.get("trust_deidentified", bool, False),
        quarantine_burned_in_annotation=section.get(
            "quarantine_burned_in_annotation", bool, True
        ),
        safe_private_file=safe_file,
        replacement_institution_name=section.get("replacement_institution_name", str, "")[:64],
        clean_words_file=words_file,
        clean_words=words,
        date_shift_min_days=min_days,
        date_shift_max_days=max_days,
        patient=_read_patient(section.section("patient")),
        user_safe_private=user_safe,
    )
    section.finish()
    return result


def _read_labels(section: _Section) -> LabelTable:
    from pydicom.datadict import tag_for_keyword

    key = section.get("key", str, "")
    if not key or tag_for_keyword(key) is None:
        raise ConfigError(f"{section.key('key')}: {key!r} is not a DICOM keyword; name the "
                          "original attribute whose value picks the row, e.g. AccessionNumber")
    missing = section.get("missing", str, "quarantine")
    if missing not in MISSING_CHOICES:
        raise ConfigError(f"{section.key('missing')}: {missing!r} is not one of "
                          f"{', '.join(MISSING_CHOICES)}")
    path = _optional_path(section.get("file", str, ""))
    if path is None:
        raise ConfigError(f"{section.key('file')}: missing; give a CSV file with a header row")
    columns, rows = read_label_rows(path, key, section.key("file"))
    section.finish()
    return LabelTable(path, key, missing, tuple(c for c in columns if c != key), rows)


def _merged(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``: tables merged key by key, anything else (lists too) replaced."""
    result = dict(base)
    for key, value in own.items():
        inherited = result.get(key)
        if isinstance(value, dict) and isinstance(inherited, dict):
            result[key] = _merged(inherited, value)
        else:
            result[key] = value
    return result


def _read_profiles(data: Mapping[str, Any], root: _Section,
                   labels: LabelTable | None) -> dict[str, ProfileSettings]:
    """Each ``[profiles.NAME]``: [deidentify] with the profile's own keys over it, and edits.
    A mistake in an inherited key is reported once, under [deidentify]."""
    tables = root.section("profiles")
    base = data.get("deidentify", {})
    profiles: dict[str, ProfileSettings] = {}
    for name in list(tables.data):
        raw = tables.get(name, dict, {})
        prefix = tables.key(name)
        if name == DEFAULT_PROFILE or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
            root.report(ConfigError(f"{prefix}: {name!r} cannot be a profile's name (letters, "
                                    f"digits, _ and -; {DEFAULT_PROFILE!r} is [deidentify])"))
            continue
        own = {k: v for k, v in raw.items() if k != "edits"}
        found: list[ConfigError] = []
        section = _Section(_merged(base if isinstance(base, dict) else {}, own), prefix, found)
        deidentify = section.attempt(lambda: _read_deidentify(section), None)  # noqa: B023
        root.problems.extend(p for p in found if _own_key(as_problem(p).key, prefix) in own)
        edits = _read_edits(_Section(raw.get("edits", {}) if isinstance(raw.get("edits"), dict)
                                     else {}, f"{prefix}.edits", root.problems), labels)
        if deidentify is not None:
            profiles[name] = ProfileSettings(name, deidentify, edits)
    return profiles


def _own_key(key: str, prefix: str) -> str:
    """The profile's key a problem is about: ``options`` of ``profiles.x.options[0]``."""
    return _INDEX.sub("", key.removeprefix(prefix + ".").split(".")[0])


def _read_edits(section: _Section, labels: LabelTable | None) -> Edits:
    def targets(name: str) -> tuple[Target, ...]:
        found = []
        for index, text in enumerate(section.get(name, list, [])):
            key = section.key(f"{name}[{index}]")
            parsed = section.attempt(lambda: _target(_string_item(text, key), key), None)  # noqa: B023
            if parsed is not None:
                found.append(parsed)
        return tuple(found)

    from gateway.deid.edits import Edits

    remove, keep = targets("remove"), targets("keep")
    sets = []
    for attribute, template in section.get("set", dict, {}).items():
        key = section.key(f"set.{attribute}")
        item = section.attempt(lambda: _set_item(attribute, template, key, labels), None)  # noqa: B023
        if item is not None:
            sets.append(item)
    section.finish()
    return Edits(remove, keep, tuple(sets))


def _target(text: str, key: str) -> Target:
    from gateway.deid.edits import EditError, parse_target

    try:
        return parse_target(text)
    except EditError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _set_item(attribute: str, template: object, key: str,
              labels: LabelTable | None) -> tuple[Target, str]:
    from gateway.deid.edits import EditError, Edits, parse_set_value

    if not isinstance(template, str):
        raise ConfigError(f"{key}: expected a string, got {type(template).__name__}")
    target = _target(attribute, key)
    try:
        parse_set_value(target, template)
    except EditError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    for column in sorted(Edits(set=((target, template),)).label_columns()):
        if labels is None:
            raise ConfigError(f"{key}: {{label.{column}}} needs a [labels] section with a CSV file")
        if column not in labels.columns:
            raise ConfigError(f"{key}: {{label.{column}}}: {labels.file} has no {column!r} column "
                              f"(it has {', '.join(labels.columns) or 'only the key'})")
    return target, template


def _check_profile_use(destinations: tuple[Destination, ...], profiles: list[str],
                       root: _Section) -> None:
    """A destination names a profile that exists; a named profile is used by a destination
    (when there are destinations: an offline config's profiles are for ``anonymize --profile``)."""
    used = set()
    for index, destination in enumerate(destinations):
        used.add(destination.profile)
        if destination.profile != DEFAULT_PROFILE and destination.profile not in profiles:
            choices = ", ".join([DEFAULT_PROFILE, *sorted(profiles)])
            root.report(ConfigError(f"destinations[{index}].profile: no profile "
                                    f"{destination.profile!r}; there are {choices}"))
    for name in profiles if destinations else ():  # without destinations: offline use only
        if name not in used:
            root.report(ConfigError(f"profiles.{name}: no destination uses it; set profile = "
                                    f"{name!r} on one, or remove the profile"))


def _read_pixels(section: _Section) -> PixelSettings:
    unmatched = section.get("unmatched", str, "quarantine")
    if unmatched not in PIXEL_UNMATCHED:
        raise ConfigError(f"{section.key('unmatched')}: {unmatched!r} is not one of "
                          f"{', '.join(PIXEL_UNMATCHED)}")
    fill = section.get("fill", int, 0)
    if not 0 <= fill <= 0xFFFF:
        raise ConfigError(f"{section.key('fill')}: {fill} is not a pixel value (0 to 65535)")
    from gateway.pixels.rules import load_rules

    rules_file = _optional_path(section.get("rules_file", str, ""))
    rules = _no_rules()
    if rules_file is not None:
        try:
            rules = load_rules(rules_file)
        except OSError as exc:
            raise ConfigError(f"{section.key('rules_file')}: cannot read {rules_file} "
                              f"({exc.strerror})") from exc
        except ConfigError as exc:
            raise ConfigError(f"{section.key('rules_file')}: {exc}") from exc
    section.finish()
    return PixelSettings(rules_file=rules_file, unmatched=unmatched, fill=fill, rules=rules)


def _read_clean_words(path: Path, key: str) -> frozenset[str]:
    """The user's words that cleaned descriptions may keep (one a line, # comments)."""
    try:
        return load_user_words(path)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from exc
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def parse_secret(material: bytes, where: str) -> Secret:
    """Hex text (as init-secret writes) or raw bytes; at least 16 bytes of key."""
    text = material.strip()
    try:
        key = bytes.fromhex(text.decode("ascii")) if text else b""
    except (UnicodeDecodeError, ValueError):
        key = text
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{where}: the secret is too short ({len(key)} bytes, need {MIN_SECRET_BYTES}); "
            "make one with `dicom-gateway init-secret FILE`"
        )
    return Secret(key)


def _read_secret(gateway: GatewaySettings) -> Secret | None:
    if gateway.secret_file is not None:
        try:
            material = gateway.secret_file.read_bytes()
        except OSError as exc:
            raise SecretError(
                f"gateway.secret_file: cannot read {gateway.secret_file} ({exc.strerror}); "
                f"make one with `dicom-gateway init-secret {gateway.secret_file}`"
            ) from exc
        return parse_secret(material, "gateway.secret_file")
    env = os.environ.get(SECRET_ENV)
    if env:
        return parse_secret(env.encode(), SECRET_ENV)
    return None


def parse_settings(data: Mapping[str, Any], source: Path | None = None) -> Settings:
    """Every section is read even after a mistake, so that all of them are reported at once
    (one ConfigError as it is; several as ConfigProblems)."""
    root = _Section(data, "")
    gateway = root.attempt(lambda: _read_gateway(root.section("gateway")), GatewaySettings())
    no_destinations: tuple[Destination, ...] = ()
    destinations = root.attempt(
        lambda: _read_destinations(root.get("destinations", list, []), root), no_destinations)
    deidentify = root.attempt(lambda: _read_deidentify(root.section("deidentify")),
                              DeidentifySettings())
    forward = root.attempt(lambda: _read_forward(root.section("forward")), ForwardSettings())
    tls = root.attempt(lambda: _read_tls(root.section("tls")), TlsSettings())
    logging_settings = root.attempt(lambda: _read_logging(root.section("logging")),
                                    LoggingSettings())
    metrics = root.attempt(lambda: _read_metrics(root.section("metrics")), MetricsSettings())
    web = root.attempt(lambda: _read_web(root.section("web")), WebSettings())
    pixels = root.attempt(lambda: _read_pixels(root.section("pixels")), None) \
        if "pixels" in data else None
    if any(r.certificate_subject for r in gateway.allowed_calling_aes) and not (
            tls.enabled and tls.require_client_certificate):
        root.report(ConfigError(
            "gateway.allowed_calling_aes: a title bound to a certificate ('AE@cert:...') needs "
            "tls.enabled = true and tls.require_client_certificate = true"))
    if any(d.tls for d in destinations) and tls.ca_certificates is None:
        root.report(ConfigError("tls.ca_certificates: a destination with tls = true needs the CA "
                                "that signed the archive's certificate"))
    labels = root.attempt(lambda: _read_labels(root.section("labels")), None) \
        if "labels" in data else None
    profiles = _read_profiles(data, root, labels)
    declared = data.get("profiles", {})
    _check_profile_use(destinations, list(declared) if isinstance(declared, dict) else [], root)
    root.finish()
    secret = root.attempt(lambda: _read_secret(gateway), None)
    _raise_problems(root.problems)
    return Settings(
        gateway=gateway,
        destinations=destinations,
        deidentify=deidentify,
        forward=forward,
        tls=tls,
        logging=logging_settings,
        metrics=metrics,
        web=web,
        pixels=pixels,
        profiles=profiles,
        labels=labels,
        secret=secret,
        source=source,
    )


def _raise_problems(problems: list[ConfigError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigProblems([as_problem(p) for p in problems])


def load_settings(path: Path) -> Settings:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path} ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_settings(data, path)


def located_problems(error: ConfigError, path: Path) -> list[Problem]:
    """The problems ``load_settings(path)`` raised, each with the line of its key."""
    problems = error.problems if isinstance(error, ConfigProblems) else [as_problem(error)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return problems
    return [replace(p, line=key_line(text, p.key)) for p in problems]


_TABLE_HEADER = re.compile(r"\s*(\[\[?)\s*([\w.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_KEY_LINE = re.compile(r"\s*([\w.\-]+)\s*=")
_INDEX = re.compile(r"\[\d+\]$")


def key_lines(text: str) -> dict[str, int]:
    """Where each key and table of a TOML text is (1-based lines), keys spelled as the
    settings name them: ``gateway.port``, ``destinations[1].host``. tomllib keeps no positions."""
    lines: dict[str, int] = {}
    table = ""
    arrays: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_HEADER.match(line)
        if header is not None:
            name = header.group(2).replace('"', "").replace(" ", "")
            if header.group(1) == "[[":
                arrays[name] = arrays.get(name, -1) + 1
                name = f"{name}[{arrays[name]}]"
            table = name
            lines.setdefault(table, number)
            continue
        key = _KEY_LINE.match(line)
        if key is not None:
            lines.setdefault(f"{table}.{key.group(1)}" if table else key.group(1), number)
    return lines


def key_line(text: str, key: str) -> int | None:
    """The line of ``key``, else of the nearest table holding it (a missing key's section)."""
    lines = key_lines(text)
    while key:
        for candidate in (key, _INDEX.sub("", key)):
            if candidate in lines:
                return lines[candidate]
        key = key.rpartition(".")[0]
    return None


def write_new_secret(path: Path) -> None:
    """32 random bytes, hex-encoded, in a new file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, (secrets.token_hex(SECRET_BYTES) + "\n").encode())


