"""Command line: ``dicom-gateway <command>``.

Exit status: 0 success, 1 something was quarantined or not found, 2 configuration or usage error,
3 state (database, data folder) error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pydicom.datadict import keyword_for_tag

from gateway import __version__, logs
from gateway.anonymize import Anonymizer, Summary, anonymize_tree
from gateway.errors import ConfigError, GatewayError, InstanceError, StateError
from gateway.files import write_private
from gateway.quarantine import Quarantine, QuarantineRecord
from gateway.settings import (
    DEFAULT_PROFILE,
    SECRET_ENV,
    Settings,
    load_settings,
    write_new_secret,
)

if TYPE_CHECKING:  # the database library is imported only by the commands that use it
    from gateway.state import PseudonymStore

DEFAULT_CONFIG = "config/gateway.toml"
CONFIG_ENV = "DICOM_GATEWAY_CONFIG"

log = logs.get_logger("cli")

EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_CONFIG = 2
EXIT_STATE = 3
EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE (`... | head`)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(Path(args.config))
    logs.configure(settings.logging.level, settings.logging.format)
    return settings


def _print_progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


# --- init-secret -------------------------------------------------------------------------------


def cmd_init_secret(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.exists():
        print(f"{path} exists; keeping it (a new secret would change every pseudonym)",
              file=sys.stderr)
        return EXIT_OK if args.exist_ok else EXIT_CONFIG
    write_new_secret(path)
    print(f"wrote a new secret to {path} (mode 0600); back it up with the pseudonym map")
    return EXIT_OK


# --- anonymize ---------------------------------------------------------------------------------


def _profile_name(settings: Settings, name: str) -> str:
    if name != DEFAULT_PROFILE and name not in settings.profiles:
        names = ", ".join([DEFAULT_PROFILE, *sorted(settings.profiles)])
        raise ConfigError(f"--profile: no profile {name!r} in the config; there are {names}")
    return name


def cmd_profile_show(args: argparse.Namespace) -> int:
    from gateway.profiles import describe

    settings = _settings(args)
    for line in describe(settings, _profile_name(settings, args.name)):
        print(line)
    return EXIT_OK


def cmd_anonymize(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _profile_name(settings, args.profile)
    secret = settings.require_secret()
    settings.prepare_data_dir()

    def open_store() -> PseudonymStore:
        from gateway.state import PseudonymStore

        return PseudonymStore(settings.database_url)

    edit = None
    if args.profile != DEFAULT_PROFILE:
        from gateway.profiles import profile_edit

        edit = profile_edit(settings, _profile_name(settings, args.profile))
        kept = settings.profile(args.profile).edits.keep
        if kept:  # the user's decision to pass originals on, said at start as serve logs it
            print(f"profile {args.profile} keeps the original values of "
                  f"{', '.join(t.name for t in kept)}", file=sys.stderr)
    anonymizer = Anonymizer(settings.policy(args.profile), secret, open_store,
                            Quarantine(settings.quarantine_dir), workers=args.workers,
                            pixels=settings.pixel_policy(), edit=edit,
                            profile="" if edit is None else args.profile)
    try:
        progress = _print_progress if sys.stderr.isatty() and not args.json else None
        summary = anonymize_tree(Path(args.src), Path(args.dst), anonymizer, progress)
    finally:
        anonymizer.close()
    log.info("anonymize finished", files_in=summary.files_in, written=summary.written,
             quarantined=summary.quarantined, skipped=summary.skipped,
             duplicates=summary.duplicates)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        _print_summary(summary, sys.stdout)
    return EXIT_ATTENTION if summary.quarantined else EXIT_OK


def _print_summary(summary: Summary, out: TextIO) -> None:
    print(f"files in:     {summary.files_in}", file=out)
    print(f"written:      {summary.written}", file=out)
    print(f"quarantined:  {summary.quarantined}", file=out)
    for reason, count in sorted(summary.reasons.items()):
        print(f"  {reason}: {count}", file=out)
    if summary.duplicates:
        print(f"duplicates:   {summary.duplicates} (the same instance again, identical output; kept once)",
              file=out)
    print(f"skipped:      {summary.skipped} (not DICOM instances)", file=out)
    for reason, count in sorted(summary.skip_reasons.items()):
        print(f"  {reason}: {count}", file=out)
    if summary.unhandled:
        print("attributes not in PS3.15 Table E.1-1, kept (review them, or set "
              "deidentify.strict = true to remove):", file=out)
        for tag, count in sorted(summary.unhandled.items()):
            name = keyword_for_tag(tag) or "unknown"
            print(f"  ({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}: {count} files", file=out)
    if summary.quarantined:
        print("see `dicom-gateway quarantine list`", file=out)


# --- map ---------------------------------------------------------------------------------------


def cmd_map_lookup(args: argparse.Namespace) -> int:
    from gateway.state import PseudonymStore

    settings = _settings(args)
    store = PseudonymStore(settings.database_url)
    try:
        entries = store.lookup(args.term)
    finally:
        store.close()
    if not entries:
        print("no entry with that original or pseudonym", file=sys.stderr)
        return EXIT_ATTENTION
    for e in entries:
        print(f"{e.kind}\t{e.original}\t{e.pseudonym}\tfirst {e.first_seen:%Y-%m-%d}"
              f"\tlast {e.last_seen:%Y-%m-%d}\tseen {e.count}")
    return EXIT_OK


def cmd_map_export(args: argparse.Namespace) -> int:
    from gateway.state import PseudonymStore

    settings = _settings(args)
    if args.output:
        _refuse_to_overwrite(Path(args.output), args.force)
    store = PseudonymStore(settings.database_url)
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        if args.output:
            os.chmod(args.output, 0o600)  # the export is the re-identification key
        writer = csv.writer(out)
        writer.writerow(["kind", "original", "pseudonym", "first_seen", "last_seen", "count"])
        for e in store.export(args.kind or ()):
            writer.writerow([e.kind, e.original, e.pseudonym, e.first_seen.isoformat(),
                             e.last_seen.isoformat(), e.count])
    finally:
        store.close()
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def _refuse_to_overwrite(path: Path, force: bool) -> None:
    """A file the user already has (an earlier export, a rules file) is not replaced unasked."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; choose another file, or --force to replace it")


# --- quarantine --------------------------------------------------------------------------------


def _record_dict(record: QuarantineRecord) -> dict[str, object]:
    return {
        "id": record.id, "time": record.time, "source": record.source, "reason": record.reason,
        "error_class": record.error_class, "message": record.message, "size": record.size,
        "context": record.context, "file": record.file,
    }


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    records = Quarantine(_settings(args).quarantine_dir).list()
    if args.json:
        print(json.dumps([_record_dict(r) for r in records], indent=2))
        return EXIT_OK
    for r in records:
        print(f"{r.id}\t{r.time[:19]}\t{r.reason}\t{r.message}")
    print(f"{len(records)} in quarantine", file=sys.stderr)
    return EXIT_OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    quarantine = Quarantine(_settings(args).quarantine_dir)
    try:
        record = quarantine.get(args.id)
    except KeyError:
        print(f"no quarantine entry {args.id}", file=sys.stderr)
        return EXIT_ATTENTION
    print(json.dumps(_record_dict(record), indent=2))
    return EXIT_OK


def _selected(quarantine: Quarantine, args: argparse.Namespace) -> list[QuarantineRecord]:
    if args.all:
        return quarantine.list()
    records = []
    for record_id in args.ids:
        try:
            records.append(quarantine.get(record_id))
        except KeyError as exc:
            raise ConfigError(f"no quarantine entry {record_id}") from exc
    return records


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    """Send each entry back the way it came (see gateway.release)."""
    from gateway.release import Releaser
    from gateway.state import Deliveries, PseudonymStore

    settings = _settings(args)
    quarantine = Quarantine(settings.quarantine_dir)
    store = PseudonymStore(settings.database_url)
    deliveries = Deliveries(settings.database_url)
    releaser = Releaser(settings, quarantine, store, deliveries)
    failed = 0
    try:
        for record in _selected(quarantine, args):
            try:
                where = releaser.release(record, Path(args.to) if args.to else None)
            except InstanceError as exc:
                print(f"{record.id}: still fails: {exc.reason}: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{record.id}: released to {where}")
            log.info("released", quarantine_id=record.id, reason=record.reason)
    finally:
        store.close()
        deliveries.close()
    return EXIT_ATTENTION if failed else EXIT_OK


def cmd_quarantine_purge(args: argparse.Namespace) -> int:
    quarantine = Quarantine(_settings(args).quarantine_dir)
    if args.older_than is not None:
        cutoff = datetime.now(UTC) - timedelta(days=args.older_than)
        records = [r for r in quarantine.list() if r.when < cutoff]
    else:
        records = _selected(quarantine, args)
    for record in records:
        quarantine.remove(record.id)
    print(f"purged {len(records)}")
    return EXIT_OK


# --- web console accounts ------------------------------------------------------------------------


def _read_new_password(from_stdin: bool) -> str:
    import getpass

    from gateway.web.accounts import check_password

    if from_stdin:
        return check_password(sys.stdin.readline().rstrip("\r\n"))
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("password: the two entries differ")
    return check_password(first)


def cmd_user_add(args: argparse.Namespace) -> int:
    from gateway.state import Accounts
    from gateway.web.accounts import check_name, hash_password

    settings = _settings(args)
    name = check_name(args.name)
    password_hash = hash_password(_read_new_password(args.password_stdin))
    accounts = Accounts(settings.database_url)
    try:
        accounts.add(name, args.role, password_hash)
        accounts.audit("user add", f"{name} role={args.role}", _os_account())
    finally:
        accounts.close()
    print(f"added {name} ({args.role})")
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    from gateway.state import Accounts

    accounts = Accounts(_settings(args).database_url)
    try:
        listed = accounts.list()
    finally:
        accounts.close()
    for account in listed:
        print(f"{account.name}\t{account.role}\tcreated {account.created:%Y-%m-%d %H:%M}")
    print(f"{len(listed)} account(s)", file=sys.stderr)
    return EXIT_OK


def cmd_user_remove(args: argparse.Namespace) -> int:
    from gateway.state import Accounts

    accounts = Accounts(_settings(args).database_url)
    try:
        removed = accounts.remove(args.name)
        if removed:
            accounts.audit("user remove", args.name, _os_account())
    finally:
        accounts.close()
    if not removed:
        print(f"no account named {args.name}", file=sys.stderr)
        return EXIT_ATTENTION
    print(f"removed {args.name} (its console sessions end at once)")
    return EXIT_OK


def _os_account() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


# --- serve, status, echo ----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.service import serve

    serve(_settings(args))
    # Everything is flushed and closed. A thread still waiting on a peer (each wait is bounded
    # by a timeout) holds nothing, so it must not hold up the exit either.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.status import status, text_lines

    report = status(_settings(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(text_lines(report)))
    cluster = report["cluster"]
    if cluster["database"] != "reachable":  # the node's part is printed all the same
        print(f"error: {cluster['error']}", file=sys.stderr)
        return EXIT_STATE
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    from gateway.forward import echo

    settings = _settings(args)
    chosen = [d for d in settings.destinations if not args.destination or d.name == args.destination]
    if not chosen:
        raise ConfigError(f"no destination named {args.destination!r} in the config")
    failed = 0
    for destination in chosen:
        status = echo(settings, destination)
        where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
        if status == 0:
            print(f"{where}: C-ECHO success")
        else:
            failed += 1
            reason = "no association" if status is None else f"status 0x{status:04X}"
            print(f"{where}: C-ECHO failed: {reason}")
    return EXIT_ATTENTION if failed else EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.checks import Finding, offline_checks, online_checks
    from gateway.settings import located_problems

    try:
        settings = load_settings(Path(args.config))
    except ConfigError as exc:
        for problem in located_problems(exc, Path(args.config)):  # every one, with its line
            where = f"line {problem.line}: " if problem.line is not None else ""
            print(f"error: {where}{problem}")
        return EXIT_CONFIG
    except GatewayError as exc:
        print(f"error: {exc}")
        return EXIT_CONFIG
    findings: list[Finding] = offline_checks(settings)
    if args.online:
        findings += online_checks(settings)
    for f in findings:
        print(f"{f.verdict}: {f.key}: {f.message}")
    return EXIT_OK if all(f.ok for f in findings) else EXIT_CONFIG


def cmd_backup(args: argparse.Namespace) -> int:
    """A portable export of the state; the key only with --with-secret (see gateway/backup.py)."""
    from gateway.backup import write_backup

    settings = _settings(args)
    secret = _secret_material(settings) if args.with_secret else None
    summary = write_backup(settings.database_url, settings.quarantine_dir, Path(args.folder),
                           secret=secret, force=args.force)
    rows = summary.rows
    print(f"backed up {rows['map.jsonl.gz']} map entries, {rows['audit.jsonl.gz']} audit rows, "
          f"{rows['counters.json']} counters and {rows['quarantine-records.jsonl']} quarantine "
          f"records to {summary.folder}")
    if summary.contains_secret:
        print("warning: this backup contains the secret key: with the map in it, whoever reads "
              "the backup can re-identify every patient; keep it as safe as the database",
              file=sys.stderr)
    else:
        print("the secret key is not in this backup: keep it separately (the map and the key "
              "belong together; --with-secret copies it here)", file=sys.stderr)
    return EXIT_OK


def _secret_material(settings: Settings) -> bytes:
    """The key as configured: the secret file's bytes, or the environment variable's value."""
    settings.require_secret()
    if settings.gateway.secret_file is not None:
        return settings.gateway.secret_file.read_bytes()
    return (os.environ.get(SECRET_ENV, "").strip() + "\n").encode()


def cmd_restore(args: argparse.Namespace) -> int:
    """Into an empty database; checks the backup whole before anything is written."""
    from gateway.backup import backup_secret, read_manifest, restore_backup

    folder = Path(args.folder)
    settings, secret_target = _restore_settings(args)
    manifest = read_manifest(folder)
    secret = backup_secret(folder)
    if args.with_secret and secret is None:
        raise StateError(f"{folder} holds no secret key (it was made without --with-secret); "
                         "nothing was restored")
    if secret is not None:
        _check_secret_agrees(settings, secret, refuse=args.with_secret)
    summary = restore_backup(settings.database_url, folder, manifest)
    print(f"restored {summary.map_entries} map entries, {summary.audit_rows} audit rows and "
          f"{summary.counters} counters from a {summary.source_dialect} backup of "
          f"{summary.created}")
    print(f"restored {summary.accounts} web console accounts")
    for note in summary.notes:
        print(note, file=sys.stderr)
    if summary.quarantine_records:
        print(f"the backup lists {summary.quarantine_records} quarantine records (in "
              "quarantine-records.jsonl); their originals are not in a backup, so none is "
              "restored", file=sys.stderr)
    if args.with_secret and secret is not None:
        _restore_secret(settings, secret_target, secret)
    elif secret is None:
        print("the key that made these pseudonyms must be in place (gateway.secret_file or "
              f"${SECRET_ENV}): the map and the key belong together", file=sys.stderr)
    return EXIT_OK


def _restore_settings(args: argparse.Namespace) -> tuple[Settings, Path | None]:
    """The settings, and the secret file restore may write: a configured secret file that does
    not exist yet is what ``restore --with-secret`` is for, so it is no error here."""
    import tomllib

    from gateway.errors import SecretError
    from gateway.settings import parse_settings

    try:
        settings = _settings(args)
        return settings, settings.gateway.secret_file
    except SecretError:
        data = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        gateway = dict(data.get("gateway", {}))
        secret_file = gateway.pop("secret_file", "")
        target = Path(secret_file).expanduser() if isinstance(secret_file, str) and secret_file \
            else None
        if not args.with_secret or target is None or target.exists():
            raise
        settings = parse_settings({**data, "gateway": gateway}, Path(args.config))
        logs.configure(settings.logging.level, settings.logging.format)
        return settings, target


def _check_secret_agrees(settings: Settings, secret: bytes, refuse: bool) -> None:
    """A key in place that is not the backup's would give known patients new pseudonyms."""
    from gateway.settings import parse_secret

    if settings.secret is None:
        return
    if parse_secret(secret, "secret.key").reveal() == settings.secret.reveal():
        return
    message = ("the configured secret key differs from the one in the backup: the map and "
               "the key belong together")
    if refuse:
        raise StateError(f"{message}; move the configured key away to restore the backup's "
                         "(nothing was restored)")
    print(f"warning: {message}", file=sys.stderr)


def _restore_secret(settings: Settings, target: Path | None, secret: bytes) -> None:
    if target is None:
        print(f"the config takes the secret from ${SECRET_ENV}: set it to the value in "
              "secret.key of the backup", file=sys.stderr)
    elif target.exists():
        print(f"{target} is in place and matches the backup's key; kept it")
    else:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(target, secret)
        print(f"wrote the backup's secret key to {target}")


# --- parser ------------------------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG),
        help=f"TOML settings file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )


# --- pixel-rules ---------------------------------------------------------------------------------


def cmd_pixel_rules_import_ctp(args: argparse.Namespace) -> int:
    from gateway.pixels.ctp import import_ctp

    try:
        text = Path(args.script).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.script} ({type(exc).__name__})", file=sys.stderr)
        return EXIT_CONFIG
    rules = import_ctp(text)
    if args.out:
        _refuse_to_overwrite(Path(args.out), args.force)
        Path(args.out).write_text(rules, "utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(rules)
    return EXIT_OK


def cmd_pixel_rules_preview(args: argparse.Namespace) -> int:
    """The first frame with the regions of the matching rule outlined (no rule: none, and the
    device facts a new rule would need)."""
    import pydicom

    from gateway.pixels.preview import write_preview
    from gateway.pixels.rules import missing_rule_hint

    settings = load_settings(Path(args.config))
    _refuse_to_overwrite(Path(args.out), args.force)
    rules = settings.pixels.rules if settings.pixels is not None else None
    ds = pydicom.dcmread(args.file)
    rule = rules.match(ds) if rules is not None else None
    write_preview(ds, rule.regions if rule is not None else (), Path(args.out))
    os.chmod(args.out, 0o600)  # the image may show the patient's name: for your eyes only
    if rule is None:
        print(f"{missing_rule_hint(ds)}; wrote {args.out} without regions")
        return EXIT_ATTENTION
    print(f"rule {rule.name!r} (line {rule.line}): {len(rule.regions)} region(s); wrote {args.out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-gateway", description="Store-and-forward anonymizing DICOM gateway."
    )
    parser.add_argument("--version", action="version", version=f"dicom-gateway {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to do (`dicom-gateway COMMAND --help` for more)")

    p = commands.add_parser("init-secret", help="make a new secret key file (32 random bytes)")
    p.add_argument("file", help="where to write the key (created 0600; never overwritten)")
    p.add_argument("--exist-ok", action="store_true", help="succeed if the file already exists")
    p.set_defaults(func=cmd_init_secret)

    p = commands.add_parser("anonymize", help="de-identify every DICOM file under SRC into DST")
    _add_config(p)
    p.add_argument("src", help="a DICOM file or a folder searched recursively")
    p.add_argument("dst", help="folder for the de-identified files (created if missing)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                   help="processes de-identifying in parallel (default: one per core)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, metavar="NAME",
                   help="a [profiles.NAME] of the config, with its edits (default: [deidentify])")
    p.set_defaults(func=cmd_anonymize)

    pr_parser = commands.add_parser("profile", help="review de-identification profiles")
    pr_commands = pr_parser.add_subparsers(dest="profile_command", required=True,
                                           metavar="ACTION", help="show")
    p = pr_commands.add_parser("show", help="print what a profile does to every attribute it "
                                            "changes, keeps or edits")
    _add_config(p)
    p.add_argument("name", help=f"the profile ({DEFAULT_PROFILE} is [deidentify])")
    p.set_defaults(func=cmd_profile_show)

    p = commands.add_parser("serve", help="run the gateway (until SIGTERM or SIGINT)")
    _add_config(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser(
        "status", help="this node (serving? healthy? what its spool still owes) and the totals of "
        "every node sharing the database")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_status)

    p = commands.add_parser("check-config", help="validate the configuration (and reach "
                            "the destinations with --online)")
    _add_config(p)
    p.add_argument("--online", action="store_true", help="also C-ECHO every destination")
    p.set_defaults(func=cmd_check_config)

    p = commands.add_parser(
        "backup", help="export the pseudonym map, audit, counters and quarantine records to FOLDER",
        description="A portable, versioned backup (SQLite or PostgreSQL) in a private folder: "
        "manifest.json with checksums, map, audit, counters, quarantine records (never the "
        "originals). The secret key only with --with-secret.")
    _add_config(p)
    p.add_argument("folder", help="the backup folder (created private)")
    p.add_argument("--with-secret", action="store_true",
                   help="also copy the secret key (secret.key): the backup then re-identifies alone")
    p.add_argument("--force", action="store_true", help="replace a backup already in FOLDER")
    p.set_defaults(func=cmd_backup)

    p = commands.add_parser(
        "restore", help="load a backup from FOLDER into an empty database",
        description="Checks the backup's format and checksums, then loads map, audit and "
        "counters into the configured database (SQLite or PostgreSQL), which must have an empty "
        "map. Stop the gateway first.")
    _add_config(p)
    p.add_argument("folder", help="a folder made by `dicom-gateway backup`")
    p.add_argument("--with-secret", action="store_true",
                   help="write the backup's secret key to gateway.secret_file if that does not "
                   "exist (never over an existing one)")
    p.set_defaults(func=cmd_restore)

    p = commands.add_parser("echo", help="C-ECHO each destination (or the one named)")
    _add_config(p)
    p.add_argument("destination", nargs="?", help="a destination's name (default: every one)")
    p.set_defaults(func=cmd_echo)

    map_parser = commands.add_parser("map", help="the pseudonym map (re-identification key)")
    map_commands = map_parser.add_subparsers(dest="map_command", required=True, metavar="ACTION",
                                             help="lookup or export")
    p = map_commands.add_parser("lookup", help="find an original or a pseudonym (audited)")
    _add_config(p)
    p.add_argument("term", help="an original value (exact) or a pseudonym (any case)")
    p.set_defaults(func=cmd_map_lookup)
    p = map_commands.add_parser("export", help="write the map as CSV (audited)")
    _add_config(p)
    p.add_argument("--format", choices=["csv"], default="csv", help="output format (csv)")
    p.add_argument("--kind", action="append", choices=["patient", "uid", "date_shift", "profile"],
                   help="only entries of this kind (repeat for several; default: all)")
    p.add_argument("--output", help="file to write (created 0600); default standard output")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    p.set_defaults(func=cmd_map_export)

    r_parser = commands.add_parser("pixel-rules", help="device rules for burned-in text")
    r_commands = r_parser.add_subparsers(dest="pixel_rules_command", required=True,
                                         metavar="ACTION", help="import-ctp or preview")
    p = r_commands.add_parser("import-ctp", help="convert a CTP DicomPixelAnonymizer script")
    p.add_argument("script", help="the CTP DicomPixelAnonymizer.script file")
    p.add_argument("--out", help="write the TOML here (default: standard output)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_pixel_rules_import_ctp)
    p = r_commands.add_parser("preview", help="the first frame as PNG, the rule's regions outlined")
    _add_config(p)
    p.add_argument("file", help="a DICOM file (its first frame is drawn)")
    p.add_argument("--out", required=True, help="the PNG to write (created 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_pixel_rules_preview)

    u_parser = commands.add_parser("user", help="web console accounts (in the state database)")
    u_commands = u_parser.add_subparsers(dest="user_command", required=True, metavar="ACTION",
                                         help="add, list or remove")
    p = u_commands.add_parser("add", help="add an account (asks for its password)")
    _add_config(p)
    p.add_argument("name", help="the user name to log in with")
    p.add_argument("--role", choices=["admin", "viewer"], required=True,
                   help="admin: may release, purge, requeue and look up the map; viewer: may look")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input (no prompt)")
    p.set_defaults(func=cmd_user_add)
    p = u_commands.add_parser("list", help="the accounts, with role and creation time")
    _add_config(p)
    p.set_defaults(func=cmd_user_list)
    p = u_commands.add_parser("remove", help="remove an account")
    _add_config(p)
    p.add_argument("name", help="the account to remove")
    p.set_defaults(func=cmd_user_remove)

    q_parser = commands.add_parser("quarantine", help="instances that could not be passed on")
    q_commands = q_parser.add_subparsers(dest="quarantine_command", required=True,
                                         metavar="ACTION", help="list, show, release or purge")
    p = q_commands.add_parser("list", help="every entry: id, time, reason, message")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=cmd_quarantine_list)
    p = q_commands.add_parser("show", help="one entry's record as JSON")
    _add_config(p)
    p.add_argument("id", help="an entry id from `quarantine list`")
    p.set_defaults(func=cmd_quarantine_show)
    for name, func, text in (
        ("release", cmd_quarantine_release, "de-identify again and pass on"),
        ("purge", cmd_quarantine_purge, "delete for good"),
    ):
        p = q_commands.add_parser(name, help=text)
        _add_config(p)
        p.add_argument("ids", nargs="*", help="entry ids from `quarantine list`")
        p.add_argument("--all", action="store_true", help="every entry")
        if name == "release":
            p.add_argument("--to", help="output folder (default: the one the entry came from)")
        else:
            p.add_argument("--older-than", type=float, metavar="DAYS",
                           help="entries quarantined more than DAYS ago")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "ids", None) == [] and not args.all and getattr(args, "older_than", None) is None:
        parser.error("give entry ids, or --all")
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be answered quietly
        return result
    except BrokenPipeError:
        return _quiet_after_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STATE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _quiet_after_broken_pipe() -> int:
    """The reader of our output went away (`| head`): stop as Unix tools do, without a
    traceback, and without a second error when Python flushes standard output at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
