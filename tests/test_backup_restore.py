"""``dicom-gateway backup`` and ``restore``: a portable, private, checked copy of the state, from
and to SQLite or PostgreSQL, giving the same ``map lookup`` answers after a restore."""

from __future__ import annotations

import gzip
import hashlib
import json
import stat
import tracemalloc
from pathlib import Path

import pytest

from gateway import backup, cli, state
from gateway.deid.engine import Pseudonym
from gateway.errors import MalformedInstance
from gateway.quarantine import Quarantine
from gateway.settings import write_new_secret
from gateway.state import RECEIVED, Deliveries, PseudonymStore
from gateway.web.accounts import hash_password, verify_password

pytest_plugins = ["pgserver"]  # postgres_server, postgres_url

PAIRS = [
    Pseudonym("patient", "PID-1", "ANON1111111111111111"),
    Pseudonym("patient", "Müller^Jörg-7", "ANON2222222222222222"),  # not ASCII: kept exactly
    Pseudonym("uid", "1.2.840.10008.1", "2.25.1"),
    Pseudonym("uid", "1.2.840.10008.2", "2.25.2"),
    Pseudonym("date_shift", "PID-1", "-17"),
]
ADA_PASSWORD = "a console password"
COUNTERS = {(RECEIVED, ""): 7, (state.FORWARDED, "archive"): 5, (state.QUARANTINED, ""): 1}


class Site:
    """A config file, its data folder and secret, and the database it names."""

    def __init__(self, folder: Path, url: str | None = None, secret: bool = True) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = folder / "var"
        self.secret = folder / "keys" / "secret.key"
        self.url = url or f"sqlite:///{self.data_dir / 'gateway.db'}"
        if secret:
            write_new_secret(self.secret)
        self.config = folder / "gateway.toml"
        self.config.write_text(
            f'[gateway]\ndata_dir = "{self.data_dir}"\ndatabase_url = "{self.url}"\n'
            f'secret_file = "{self.secret}"\n')

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        command, rest = args[0], args[1:]
        words = command.split()
        code = cli.main([*words, "--config", str(self.config), *rest])
        out, err = capsys.readouterr()
        return code, out, err

    def fill(self) -> None:
        store, deliveries = PseudonymStore(self.url), Deliveries(self.url)
        try:
            store.record(PAIRS)
            store.record(PAIRS[:2])  # seen again: counts of 2
            store.lookup("PID-1")  # an audited look-up
            deliveries.count(COUNTERS, durable=True)
        finally:
            store.close()
            deliveries.close()
        accounts = state.Accounts(self.url)
        try:
            accounts.add("ada", "admin", hash_password(ADA_PASSWORD))
        finally:
            accounts.close()
        Quarantine(self.data_dir / "quarantine").put(
            b"ORIGINAL-DICOM-BYTES", "SENDER@127.0.0.1:4242", MalformedInstance("no SOP Instance UID"))

    def map_size(self) -> int:
        store = PseudonymStore(self.url)
        try:
            return len(list(store.export()))
        finally:
            store.close()

    def accounts(self) -> list[state.Account]:
        accounts = state.Accounts(self.url)
        try:
            return accounts.list()
        finally:
            accounts.close()

    def audit_actions(self) -> list[str]:
        store = PseudonymStore(self.url)
        try:
            return [action for _, action, _, _ in store.audit_entries()]
        finally:
            store.close()


def lookups(site: Site, capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[int, str]]:
    """``map lookup`` for every original and pseudonym there is: exit status and output."""
    answers = {}
    for term in sorted({p.original for p in PAIRS} | {p.pseudonym for p in PAIRS}):
        code, out, _ = site.run(capsys, "map lookup", term)
        answers[term] = (code, out)
    return answers


@pytest.fixture(params=["postgresql-to-sqlite", "sqlite-to-postgresql"])
def source_and_target(request, tmp_path) -> tuple[Site, Site]:
    postgres = request.getfixturevalue("postgres_server")
    if request.param == "postgresql-to-sqlite":
        return Site(tmp_path / "old", postgres.new_database()), Site(tmp_path / "new", secret=False)
    return Site(tmp_path / "old"), Site(tmp_path / "new", postgres.new_database(), secret=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- across databases ----------------------------------------------------------------------------


def test_restore_into_the_other_database_answers_every_lookup_the_same(source_and_target, capsys):
    source, target = source_and_target
    source.fill()
    before = lookups(source, capsys)
    folder = source.folder / "backup"
    assert source.run(capsys, "backup", str(folder), "--with-secret")[0] == 0

    code, out, err = target.run(capsys, "restore", str(folder), "--with-secret")
    assert code == 0, err
    assert f"restored {len(PAIRS)} map entries" in out
    assert target.secret.read_bytes() == source.secret.read_bytes()
    assert mode(target.secret) == 0o600
    actions = target.audit_actions()
    assert actions == source.audit_actions() + ["restore"]  # the source's trail came along
    assert lookups(target, capsys) == before
    assert all(code == 0 for code, _ in before.values())
    deliveries = Deliveries(target.url)
    try:
        assert deliveries.counters() == COUNTERS
    finally:
        deliveries.close()
    assert "restored 1 web console accounts" in out
    [ada] = target.accounts()
    assert (ada.name, ada.role) == ("ada", "admin")
    assert verify_password(ADA_PASSWORD, ada.password_hash)  # the console login works there


# --- what a backup is ----------------------------------------------------------------------------


def test_backup_is_private_versioned_and_checksummed_without_originals_or_secret(tmp_path, capsys):
    site = Site(tmp_path)
    site.fill()
    folder = tmp_path / "backup"
    code, _, err = site.run(capsys, "backup", str(folder))
    assert code == 0
    assert "not in this backup: keep it separately" in err
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        (*backup.DATA_FILES, *backup.OPTIONAL_FILES, backup.MANIFEST))
    assert all(mode(p) == 0o600 for p in folder.iterdir())

    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == ("dicom-gateway-backup", 1)
    assert manifest["source_dialect"] == "sqlite"
    assert manifest["contains_secret"] is False
    for name, facts in manifest["files"].items():
        assert facts["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert manifest["files"]["map.jsonl.gz"]["rows"] == len(PAIRS)
    assert manifest["files"]["quarantine-records.jsonl"]["rows"] == 1

    with gzip.open(folder / "map.jsonl.gz") as lines:
        rows = [json.loads(line) for line in lines]
    assert {(r["kind"], r["original"], r["pseudonym"]) for r in rows} == {
        (p.kind, p.original, p.pseudonym) for p in PAIRS}
    [account] = [json.loads(line) for line in (folder / "accounts.jsonl").open()]
    assert account["name"] == "ada" and account["password_hash"].startswith("scrypt$")
    assert ADA_PASSWORD not in (folder / "accounts.jsonl").read_text()
    [record] = [json.loads(line) for line in (folder / "quarantine-records.jsonl").open()]
    assert record["reason"] == "malformed"
    everything = b"".join(p.read_bytes() for p in folder.iterdir())
    assert b"ORIGINAL-DICOM-BYTES" not in everything
    assert site.secret.read_bytes().strip() not in everything


def test_backup_with_secret_is_flagged_and_warned_about(tmp_path, capsys):
    site = Site(tmp_path)
    site.fill()
    folder = tmp_path / "backup"
    code, _, err = site.run(capsys, "backup", str(folder), "--with-secret")
    assert code == 0
    assert "warning: this backup contains the secret key" in err
    assert (folder / "secret.key").read_bytes() == site.secret.read_bytes()
    assert mode(folder / "secret.key") == 0o600
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["contains_secret"] is True
    assert "secret.key" in manifest["files"]


def test_backup_refuses_to_replace_a_backup_unless_forced(tmp_path, capsys):
    site = Site(tmp_path)
    site.fill()
    folder = tmp_path / "backup"
    assert site.run(capsys, "backup", str(folder), "--with-secret")[0] == 0
    code, _, err = site.run(capsys, "backup", str(folder))
    assert code == 3
    assert "already holds a backup" in err and "--force" in err
    assert site.run(capsys, "backup", str(folder), "--force")[0] == 0
    assert not (folder / "secret.key").exists()  # the replaced backup's key went with it
    assert json.loads((folder / "manifest.json").read_text())["contains_secret"] is False


def test_backup_streams_the_map(tmp_path):
    """A big map is written a batch at a time: memory does not grow with the rows."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    store = PseudonymStore(url)
    rows = 20_000
    try:
        store.record(Pseudonym("uid", f"1.2.826.0.1.3680043.{n}", f"2.25.{n:030d}")
                     for n in range(rows))
    finally:
        store.close()
    tracemalloc.start()
    try:
        summary = backup.write_backup(url, tmp_path / "quarantine", tmp_path / "backup")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.rows["map.jsonl.gz"] == rows
    assert peak < 8 * 1024 * 1024  # all 20,000 rows as objects take well over this


# --- restore refuses -----------------------------------------------------------------------------


@pytest.fixture
def made_backup(tmp_path, capsys) -> Path:
    site = Site(tmp_path / "old")
    site.fill()
    folder = tmp_path / "backup"
    assert site.run(capsys, "backup", str(folder), "--with-secret")[0] == 0
    return folder


def test_restore_refuses_a_tampered_file_and_writes_nothing(tmp_path, made_backup, capsys):
    counters = made_backup / "counters.json"
    counters.write_text(counters.read_text().replace('"value": 7', '"value": 8'))
    target = Site(tmp_path / "new", secret=False)
    code, _, err = target.run(capsys, "restore", str(made_backup), "--with-secret")
    assert code == 3
    assert "counters.json does not match its checksum" in err
    assert target.map_size() == 0
    assert not target.secret.exists()


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format_version=2), "format 2"),
    (lambda m: m.update(format="something-else"), "not a dicom-gateway backup"),
    (lambda m: m["files"].pop("map.jsonl.gz"), "does not list every file"),
])
def test_restore_refuses_a_manifest_it_cannot_trust(tmp_path, made_backup, capsys, change, message):
    manifest_path = made_backup / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest_path.write_text(json.dumps(manifest))
    target = Site(tmp_path / "new")
    code, _, err = target.run(capsys, "restore", str(made_backup))
    assert code == 3
    assert message in err
    assert target.map_size() == 0


def test_restore_keeps_an_account_added_here_and_reads_backups_without_accounts(
        tmp_path, made_backup, capsys):
    target = Site(tmp_path / "new")
    accounts = state.Accounts(target.url)
    try:
        accounts.add("ada", "viewer", hash_password("set up here"))
    finally:
        accounts.close()
    code, out, err = target.run(capsys, "restore", str(made_backup))
    assert code == 0, err
    assert "restored 0 web console accounts" in out
    assert "console accounts kept as they are here: ada" in err
    assert [(a.name, a.role) for a in target.accounts()] == [("ada", "viewer")]

    older = tmp_path / "older"  # a backup from before accounts were backed up
    older.mkdir()
    for name in (*backup.DATA_FILES, backup.MANIFEST):
        (older / name).write_bytes((made_backup / name).read_bytes())
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["files"]["accounts.jsonl"]
    del manifest["files"]["secret.key"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = Site(tmp_path / "newer").run(capsys, "restore", str(older))
    assert code == 0, err
    assert "the backup has no console accounts" in err


def test_restore_refuses_an_unfinished_backup(tmp_path, made_backup, capsys):
    (made_backup / "manifest.json").unlink()
    code, _, err = Site(tmp_path / "new").run(capsys, "restore", str(made_backup))
    assert code == 3
    assert "no manifest.json" in err


def test_restore_refuses_a_database_whose_map_is_not_empty(tmp_path, made_backup, capsys):
    target = Site(tmp_path / "new")
    store = PseudonymStore(target.url)
    store.record([Pseudonym("patient", "OTHER", "ANONOTHER")])
    store.close()
    code, _, err = target.run(capsys, "restore", str(made_backup))
    assert code == 3
    assert "not empty" in err
    assert target.map_size() == 1
    assert "restore" not in target.audit_actions()


def test_restore_never_overwrites_a_different_key(tmp_path, made_backup, capsys):
    target = Site(tmp_path / "new")  # has a key of its own
    own_key = target.secret.read_bytes()
    code, _, err = target.run(capsys, "restore", str(made_backup), "--with-secret")
    assert code == 3
    assert "differs from the one in the backup" in err
    assert target.secret.read_bytes() == own_key
    assert target.map_size() == 0


def test_restore_keeps_an_identical_key_in_place(tmp_path, made_backup, capsys):
    target = Site(tmp_path / "new", secret=False)
    target.secret.parent.mkdir(mode=0o700)
    target.secret.write_bytes((made_backup / "secret.key").read_bytes())
    code, out, _ = target.run(capsys, "restore", str(made_backup), "--with-secret")
    assert code == 0
    assert "matches the backup's key; kept it" in out


def test_restore_without_secret_reminds_that_the_key_belongs_to_the_map(tmp_path, capsys):
    site = Site(tmp_path / "old")
    site.fill()
    folder = tmp_path / "backup"
    assert site.run(capsys, "backup", str(folder))[0] == 0
    target = Site(tmp_path / "new")
    code, _, err = target.run(capsys, "restore", str(folder))
    assert code == 0
    assert "the map and the key belong together" in err
    assert "originals are not in a backup" in err


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_both_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--with-secret" in out and "--config" in out and "folder" in out
