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


def cmd_anonymize(args: argparse.Namespace) -> int:
    settings = _settings(args)
    secret = settings.require_secret()
    settings.prepare_data_dir()

    def open_store() -> PseudonymStore:
        from gateway.state import PseudonymStore

        return PseudonymStore(settings.database_url)

    anonymizer = Anonymizer(settings.policy(), secret, open_store,
                            Quarantine(settings.quarantine_dir), workers=args.workers,
                            pixels=settings.pixel_policy())
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


# --- quarantine --------------------------------------------------------------------------------


def _record_dict(record: QuarantineRecord) -> dict[str, object]:
    return {
        "id": record.id, "time": record.time, "source": record.source, "reason": record.reason,
        "error_class": record.error_class, "message": record.message, "size": record.size,
        "context": record.context,
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

    try:
        settings = load_settings(Path(args.config))
    except GatewayError as exc:
        print(f"error: {exc}")
        return EXIT_CONFIG
    findings: list[Finding] = offline_checks(settings)
    if args.online:
        findings += online_checks(settings)
    for f in findings:
        print(f"{'ok' if f.ok else 'error'}: {f.key}: {f.message}")
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
    parser.add_argument("--version", action="version", version=f"dicom-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("init-secret", help="make a new secret key file (32 random bytes)")
    p.add_argument("file")
    p.add_argument("--exist-ok", action="store_true", help="succeed if the file already exists")
    p.set_defaults(func=cmd_init_secret)

    p = commands.add_parser("anonymize", help="de-identify every DICOM file under SRC into DST")
    _add_config(p)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                   help="processes de-identifying in parallel (default: one per core)")
    p.set_defaults(func=cmd_anonymize)

    p = commands.add_parser("serve", help="run the gateway (until SIGTERM or SIGINT)")
    _add_config(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser(
        "status", help="this node (serving? healthy? what its spool still owes) and the totals of "
        "every node sharing the database")
    _add_config(p)
    p.add_argument("--json", action="store_true")
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
    p.add_argument("folder")
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
    p.add_argument("folder")
    p.add_argument("--with-secret", action="store_true",
                   help="write the backup's secret key to gateway.secret_file if that does not "
                   "exist (never over an existing one)")
    p.set_defaults(func=cmd_restore)

    p = commands.add_parser("echo", help="C-ECHO each destination (or the one named)")
    _add_config(p)
    p.add_argument("destination", nargs="?")
    p.set_defaults(func=cmd_echo)

    map_parser = commands.add_parser("map", help="the pseudonym map (re-identification key)")
    map_commands = map_parser.add_subparsers(dest="map_command", required=True)
    p = map_commands.add_parser("lookup", help="find an original or a pseudonym")
    _add_config(p)
    p.add_argument("term")
    p.set_defaults(func=cmd_map_lookup)
    p = map_commands.add_parser("export", help="write the map as CSV")
    _add_config(p)
    p.add_argument("--format", choices=["csv"], default="csv")
    p.add_argument("--kind", action="append", choices=["patient", "uid", "date_shift"])
    p.add_argument("--output", help="file to write (created 0600); default standard output")
    p.set_defaults(func=cmd_map_export)

    r_parser = commands.add_parser("pixel-rules", help="device rules for burned-in text")
    r_commands = r_parser.add_subparsers(dest="pixel_rules_command", required=True)
    p = r_commands.add_parser("import-ctp", help="convert a CTP DicomPixelAnonymizer script")
    p.add_argument("script")
    p.add_argument("--out", help="write the TOML here (default: standard output)")
    p.set_defaults(func=cmd_pixel_rules_import_ctp)
    p = r_commands.add_parser("preview", help="the first frame as PNG, the rule's regions outlined")
    _add_config(p)
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pixel_rules_preview)

    q_parser = commands.add_parser("quarantine", help="instances that could not be passed on")
    q_commands = q_parser.add_subparsers(dest="quarantine_command", required=True)
    p = q_commands.add_parser("list")
    _add_config(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine_list)
    p = q_commands.add_parser("show")
    _add_config(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_quarantine_show)
    for name, func, text in (
        ("release", cmd_quarantine_release, "de-identify again and pass on"),
        ("purge", cmd_quarantine_purge, "delete for good"),
    ):
        p = q_commands.add_parser(name, help=text)
        _add_config(p)
        p.add_argument("ids", nargs="*")
        p.add_argument("--all", action="store_true")
        if name == "release":
            p.add_argument("--to", help="output folder (default: the one the entry came from)")
        else:
            p.add_argument("--older-than", type=float, metavar="DAYS")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "ids", None) == [] and not args.all and getattr(args, "older_than", None) is None:
        parser.error("give entry ids, or --all")
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STATE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
