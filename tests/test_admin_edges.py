"""The rough edges a new administrator hits: check-config reports every mistake with its line
and knows our own running gateway, a closed pipe ends quietly, files are not overwritten unasked,
pseudonyms are found in any case, dead letters are named by their UID, and every option has help."""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.deid.engine import Pseudonym
from gateway.errors import DeliveryRefused, MalformedInstance
from gateway.forward import dead_letter_name
from gateway.quarantine import ORIGINAL, RECORD, Quarantine
from gateway.settings import SECRET_ENV
from gateway.state import PseudonymStore

PROJECT = Path(__file__).resolve().parents[1]
SECRET_HEX = "ab" * 32


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


def write_config(tmp_path: Path, extra: str = "", port: int | None = None) -> Path:
    (tmp_path / "secret.key").write_text(SECRET_HEX + "\n")
    port = port or free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\nsecret_file = "{tmp_path / "secret.key"}"\n'
                    f"port = {port}\n\n[[destinations]]\nname = \"a\"\nae_title = \"A\"\nport = 11113\n"
                    f"{extra}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_config(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    status = main(["check-config", "--config", str(config)])
    return status, capsys.readouterr().out.splitlines()


# --- 1. check-config: every problem, with its key and line; our own gateway's port --------------


def test_check_config_reports_every_mistake_with_its_key_and_line(tmp_path, capsys):
    config = write_config(tmp_path, '\n[forward]\nassociations = 0\nbatchsize = 3\n\n'
                                    '[logging]\nlevel = "loud"\n')
    text = config.read_text().splitlines()
    status, out = check_config(config, capsys)
    assert status == 2
    line = {key: text.index(entry) + 1 for key, entry in
            [("forward.associations", "associations = 0"), ("forward.batchsize", "batchsize = 3"),
             ("logging.level", 'level = "loud"')]}
    assert out == [
        f"error: line {line['forward.associations']}: forward.associations: must be 1 or more",
        f"error: line {line['forward.batchsize']}: forward.batchsize: unknown key; did you mean "
        "'batch_size'?",
        f"error: line {line['logging.level']}: logging.level: 'loud' is not one of debug, info, "
        "warning, error",
    ]


def test_a_mistake_in_one_destination_does_not_hide_the_next(tmp_path, capsys):
    config = write_config(tmp_path, '\n[[destinations]]\nname = "b"\nae_title = "B"\nport = 0\n'
                                    '\n[[destinations]]\nname = "c"\nae_title = "C"\nprot = 1\n')
    status, out = check_config(config, capsys)
    text = config.read_text().splitlines()
    assert status == 2
    assert out == [
        f"error: line {text.index('port = 0') + 1}: destinations[1].port: port 0 is out of range; "
        "use 1-65535",
        f"error: line {text.index('prot = 1') + 1}: destinations[2].prot: unknown key; did you "
        "mean 'port'?",
    ]


def write_node(data_dir: Path, port: int, pid: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (data_dir / "node.json").write_text(json.dumps(
        {"pid": pid, "listen": f"127.0.0.1:{port}", "started": "2025-01-01T00:00:00+00:00",
         "updated": time.time()}))


def test_the_port_of_our_own_running_gateway_is_no_error(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        config = write_config(tmp_path, port=port)
        write_node(tmp_path / "var", port, os.getpid())  # a live pid that listens there
        status, out = check_config(config, capsys)
    assert status == 0, out
    assert (f"ok: gateway.port: 127.0.0.1:{port} is in use by the gateway serving from this config "
            f"(pid {os.getpid()})") in out


def test_a_held_serve_lock_marks_the_port_as_ours(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        config = write_config(tmp_path, port=port)
        (tmp_path / "var").mkdir(mode=0o700)
        fd = os.open(tmp_path / "var" / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            status, out = check_config(config, capsys)
        finally:
            os.close(fd)
    assert status == 0, out
    assert f"ok: gateway.port: 127.0.0.1:{port} is in use by the gateway serving from this config" in out


def test_a_port_held_by_another_program_is_an_error(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        config = write_config(tmp_path, port=port)
        write_node(tmp_path / "var", port + 1 if port < 65535 else port - 1, os.getpid())
        status, out = check_config(config, capsys)
    assert status == 2
    assert [line for line in out if line.startswith("error: gateway.port:")] == [
        f"error: gateway.port: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "another program has it (not a gateway serving from this data_dir)"]


# --- 2. an unusable data folder: the key and what to do -----------------------------------------


def test_data_dir_below_a_file_names_the_key_and_what_to_do(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(str(tmp_path / "var"), str(tmp_path / "afile" / "var")))
    status, out = check_config(config, capsys)
    assert status == 2
    assert f"error: gateway.data_dir: {tmp_path / 'afile' / 'var'} (or a folder above it) is a file, " \
           "not a folder; or set gateway.data_dir to a folder this user may write" in out


def test_data_dir_without_permission_says_whom_to_give_it(tmp_path, capsys, monkeypatch):
    # Tests may run as root, whom permissions do not stop: the refusal is simulated.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("gateway.checks.tempfile.NamedTemporaryFile", refuse)
    status, out = check_config(write_config(tmp_path), capsys)
    [line] = [line for line in out if line.startswith("error: gateway.data_dir:")]
    assert status == 2
    assert "cannot be created or written by the user" in line and "sudo install -d -m 700 -o" in line
    assert "Permission denied" not in line and "Errno" not in line


# --- 3, 4, 5: the map from the command line ------------------------------------------------------


def fill_map(config: Path, count: int) -> None:
    store = PseudonymStore(f"sqlite:///{(config.parent / 'var' / 'gateway.db')}")
    try:
        store.record([Pseudonym("uid", f"1.2.3.{n}", f"2.25.{10**30 + n}") for n in range(count)]
                     + [Pseudonym("patient", "mrn-77", "ANON0123456789ABCDEF")])
    finally:
        store.close()


def test_map_export_into_a_closed_pipe_ends_quietly(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "var").mkdir(mode=0o700)
    fill_map(config, 3000)  # far more than a pipe holds
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "map", "export", "--config",
                                str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"kind,original,pseudonym")
    process.stdout.close()  # as `| head -1` does
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert err == b""


def test_map_export_does_not_overwrite_a_file_without_force(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "var").mkdir(mode=0o700)
    fill_map(config, 2)
    earlier = tmp_path / "key.csv"
    earlier.write_text("an earlier export\n")
    assert main(["map", "export", "--config", str(config), "--output", str(earlier)]) == 2
    assert f"{earlier} exists; choose another file, or --force to replace it" in capsys.readouterr().err
    assert earlier.read_text() == "an earlier export\n"
    assert main(["map", "export", "--config", str(config), "--output", str(earlier), "--force"]) == 0
    assert earlier.read_text().count("\n") == 4  # header and three pairs


def test_import_ctp_does_not_overwrite_rules_without_force(tmp_path, capsys):
    script = tmp_path / "DicomPixelAnonymizer.script"
    script.write_text("")
    rules = tmp_path / "rules.toml"
    rules.write_text("# my rules\n")
    assert main(["pixel-rules", "import-ctp", str(script), "--out", str(rules)]) == 2
    assert rules.read_text() == "# my rules\n"
    assert main(["pixel-rules", "import-ctp", str(script), "--out", str(rules), "--force"]) == 0
    assert rules.read_text() != "# my rules\n"


def test_map_lookup_finds_pseudonyms_in_any_case_and_originals_exactly(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "var").mkdir(mode=0o700)
    fill_map(config, 1)
    assert main(["map", "lookup", "--config", str(config), "anon0123456789abcdef"]) == 0
    assert capsys.readouterr().out.startswith("patient\tmrn-77\tANON0123456789ABCDEF\t")
    assert main(["map", "lookup", "--config", str(config), "mrn-77"]) == 0
    assert main(["map", "lookup", "--config", str(config), "MRN-77"]) == 1  # originals: exact


# --- 6. dead letters named by their pseudonymous SOP Instance UID -------------------------------


def test_a_dead_letter_is_stored_under_its_uid_and_still_shown_and_purged(tmp_path, capsys):
    config = write_config(tmp_path)
    quarantine = Quarantine(tmp_path / "var" / "quarantine")
    uid = "2.25.123456789012345678901234567890"
    record = quarantine.put(b"DEID", "forward to a", DeliveryRefused("status 0xA900"),
                            {"destination": "a", "dead_letter": True},
                            file_name=dead_letter_name(uid))
    folder = quarantine.root / record.id
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{uid}.dcm", RECORD])
    assert json.loads((folder / RECORD).read_text())["file"] == f"{uid}.dcm"
    assert quarantine.original(record.id) == b"DEID"
    assert main(["quarantine", "show", "--config", str(config), record.id]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == f"{uid}.dcm"
    assert main(["quarantine", "purge", "--config", str(config), record.id]) == 0
    assert not folder.exists()


def test_entries_from_before_keep_working_as_original_dcm(tmp_path):
    quarantine = Quarantine(tmp_path / "q")
    record = quarantine.put(b"ORIG", "CT@127.0.0.1:4242", MalformedInstance("truncated"))
    folder = quarantine.root / record.id
    old = json.loads((folder / RECORD).read_text())
    del old["file"]  # as records were written before the file had a name of its own
    (folder / RECORD).write_text(json.dumps(old))
    assert quarantine.get(record.id).file == ORIGINAL
    assert quarantine.original(record.id) == b"ORIG"


def test_a_dead_letter_without_a_usable_uid_is_original_dcm():
    assert dead_letter_name("") == ORIGINAL
    assert dead_letter_name("../../etc/passwd") == ORIGINAL
    assert dead_letter_name("1.2.840.10008.1") == "1.2.840.10008.1.dcm"


# --- 7. help everywhere ------------------------------------------------------------------------


def all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{' '.join((*path, name))}: command without help"
                yield from all_parsers(sub, (*path, name))


def test_every_command_and_option_has_help_and_help_works():
    parsers = list(all_parsers(build_parser()))
    assert len(parsers) > 15
    for path, parser in parsers:
        for action in parser._actions:
            assert action.help, f"{' '.join(path) or 'dicom-gateway'}: {action.dest} has no help"
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0


# --- 8. the example config and its example archive agree -----------------------------------------


def test_the_example_archive_takes_as_many_associations_and_the_compressed_syntaxes():
    import tomllib

    text = (PROJECT / "config" / "gateway.toml").read_text()
    associations = tomllib.loads(text)["forward"]["associations"]
    [command] = [line.lstrip("# ").strip() for line in text.splitlines() if "storescp " in line
                 and "-aet ARCHIVE" in line]
    assert associations == 1 or "--fork" in command.split()
    assert "+xa" in command.split()
    assert command in (PROJECT / "README.md").read_text()
