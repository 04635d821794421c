"""Settings: the example config loads, every mistake names its key, the secret stays secret."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError, SecretError
from gateway.settings import SECRET_ENV, load_settings

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = PROJECT / "config" / "gateway.toml"
SECRET_HEX = bytes(range(0x40, 0x60)).hex()  # 64 hex digits


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DICOM_GATEWAY_SECRET in the developer's shell must not change what these tests see."""
    monkeypatch.delenv(SECRET_ENV, raising=False)


def write_config(tmp_path: Path, body: str = "", gateway: str = "", secret: bool = True) -> Path:
    """A config whose data and secret live under tmp_path; ``body`` adds further tables."""
    secret_file = tmp_path / "secret.key"
    if secret:
        secret_file.write_text(SECRET_HEX + "\n")
    secret_line = f'secret_file = "{secret_file}"' if secret else ""
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n{secret_line}\n{gateway}\n{body}\n'
    )
    return path


def config_error(tmp_path: Path, body: str = "", gateway: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, body, gateway))
    return str(info.value)


# --- the example configuration ------------------------------------------------------------------


def test_example_config_loads_with_its_defaults(tmp_path, monkeypatch):
    # The example's paths are relative to the working directory ("var/secret.key").
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret.key").write_text(SECRET_HEX + "\n")
    (tmp_path / "config").mkdir()
    shutil.copy(EXAMPLE_CONFIG.parent / "pixel-rules.toml", tmp_path / "config")

    settings = load_settings(EXAMPLE_CONFIG)

    gw = settings.gateway
    assert (gw.ae_title, gw.host, gw.port) == ("DICOM_GW", "127.0.0.1", 11112)
    assert gw.allowed_calling_aes == ()
    assert gw.data_dir == Path("var")
    assert gw.secret_file == Path("var/secret.key")
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'gateway.db'}"
    assert settings.quarantine_dir == Path("var/quarantine")
    assert [(d.name, d.ae_title, d.host, d.port) for d in settings.destinations] == [
        ("archive", "ARCHIVE", "127.0.0.1", 11113)
    ]
    d = settings.deidentify
    assert d.options == ()
    assert d.uid_root == "2.25"
    assert (d.strict, d.trust_deidentified, d.quarantine_burned_in_annotation) == (
        False, False, True)
    assert (d.patient.mode, d.patient.prefix) == ("hash", "ANON")
    assert (d.date_shift_min_days, d.date_shift_max_days) == (1, 365)
    assert settings.require_secret() == bytes.fromhex(SECRET_HEX)
    settings.policy()  # the engine accepts what the example describes
    pixels = settings.pixels
    assert pixels is not None and (pixels.unmatched, pixels.fill) == ("quarantine", 0)
    assert len(pixels.rules.rules) > 30  # the shipped device layouts
    assert d.quarantine_burned_in_annotation and not settings.policy().quarantine_burned_in_annotation


def test_the_example_configs_commented_second_profile_loads_when_uncommented(tmp_path, monkeypatch):
    """What the example tells an administrator to uncomment is a working profile."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret.key").write_text(SECRET_HEX + "\n")
    (tmp_path / "config").mkdir()
    shutil.copy(EXAMPLE_CONFIG.parent / "pixel-rules.toml", tmp_path / "config")
    text = EXAMPLE_CONFIG.read_text()
    start = text.index("# A second archive with a profile of its own")
    block = text[start:].splitlines()[2:]
    assert block and all(line.startswith("#") for line in block)
    config = tmp_path / "gateway.toml"
    config.write_text(text[:start] + "\n".join(line[2:] for line in block) + "\n")

    settings = load_settings(config)

    assert [(d.name, d.profile) for d in settings.destinations] == [
        ("archive", "default"), ("teaching", "teaching")]
    teaching = settings.profile("teaching")
    assert teaching.deidentify.options == ("retain_patient_characteristics",)
    assert [target.tag for target in teaching.edits.remove] == [0x00080020, 0x00080021]
    settings.policy("teaching")


def test_example_config_without_its_secret_file_names_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    shutil.copy(EXAMPLE_CONFIG.parent / "pixel-rules.toml", tmp_path / "config")
    with pytest.raises(SecretError) as info:
        load_settings(EXAMPLE_CONFIG)
    message = str(info.value)
    assert message.startswith("gateway.secret_file: cannot read var/secret.key")
    assert "init-secret var/secret.key" in message


# --- each mistake names its key ------------------------------------------------------------------


def test_unknown_key_suggests_the_close_one(tmp_path):
    message = config_error(tmp_path, gateway="prot = 11112")
    assert message == "gateway.prot: unknown key; did you mean 'port'?"


def test_unknown_section_suggests_the_close_one(tmp_path):
    message = config_error(tmp_path, body="[deidentfy]\nstrict = true")
    assert message == "deidentfy: unknown key; did you mean 'deidentify'?"


def test_unknown_key_in_a_nested_table_gives_its_full_name(tmp_path):
    message = config_error(tmp_path, body="[deidentify.patient]\nprefx = 'X'")
    assert message == "deidentify.patient.prefx: unknown key; did you mean 'prefix'?"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('port = "11112"', "gateway.port: expected an integer, got str"),
        ("port = true", "gateway.port: expected an integer, got bool"),
        ("port = 11112.0", "gateway.port: expected an integer, got float"),
        ("ae_title = 7", "gateway.ae_title: expected a string, got int"),
        ('allowed_calling_aes = "PACS"', "gateway.allowed_calling_aes: expected a list, got str"),
        ('allowed_calling_aes = ["PACS", 3]',
         "gateway.allowed_calling_aes[1]: expected a string, got int"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(tmp_path, line, expected):
    assert config_error(tmp_path, gateway=line).startswith(expected)


def test_wrong_type_in_deidentify_names_the_key(tmp_path):
    message = config_error(tmp_path, body='[deidentify]\nstrict = "yes"')
    assert message.startswith("deidentify.strict: expected true or false, got str")


@pytest.mark.parametrize(
    "title", ["ABCDEFGHIJKLMNOPQ", "PACS\\\\ONE", "   ", "", "CAF\u00c9"],
    ids=["17-chars", "backslash", "blank", "empty", "non-ascii"],
)
def test_bad_ae_title_is_refused(tmp_path, title):
    message = config_error(tmp_path, gateway=f'ae_title = "{title}"')
    assert message.startswith("gateway.ae_title: ")
    assert "is not a valid AE title" in message


def test_sixteen_character_ae_title_is_accepted(tmp_path):
    settings = load_settings(write_config(tmp_path, gateway='ae_title = "ABCDEFGHIJKLMNOP"'))
    assert settings.gateway.ae_title == "ABCDEFGHIJKLMNOP"


def test_bad_allowed_calling_ae_names_its_index(tmp_path):
    message = config_error(tmp_path, gateway='allowed_calling_aes = ["PACS", "TOO_LONG_AE_TITLE_X"]')
    assert message.startswith("gateway.allowed_calling_aes[1]: 'TOO_LONG_AE_TITLE_X' is not")


def test_a_title_bound_to_a_certificate_needs_tls_with_client_certificates(tmp_path):
    message = config_error(tmp_path, gateway='allowed_calling_aes = ["PACS@cert:CN=pacs.example.org"]')
    assert message == ("gateway.allowed_calling_aes: a title bound to a certificate ('AE@cert:...') "
                       "needs tls.enabled = true and tls.require_client_certificate = true")


@pytest.mark.parametrize("rule, part", [("PACS@cert:XX=1", "XX=1"), ("PACS@cert:CN", "CN"),
                                        ("PACS@cert:CN=a,", ""), ("PACS@cert:", "")])
def test_a_certificate_subject_that_cannot_match_is_refused(tmp_path, rule, part):
    message = config_error(tmp_path, gateway=f'allowed_calling_aes = ["{rule}"]')
    assert message.startswith(f"gateway.allowed_calling_aes[0]: {part!r} is not an attribute "
                              "of a certificate subject; write 'cert:' then NAME=value pairs")


def test_caller_rules_match_title_address_and_every_subject_attribute():
    from gateway.receive import caller_allowed
    from gateway.settings import CallerRule

    rules = (CallerRule("PACS", certificate_subject=(("commonName", "pacs.example.org"),
                                                     ("organizationName", "Hospital"))),
             CallerRule("CT", address="10.0.0.5"))
    pacs = (("commonName", "pacs.example.org"), ("organizationName", "Hospital"),
            ("countryName", "CH"))
    assert caller_allowed(rules, "PACS", "10.9.9.9", pacs)
    assert not caller_allowed(rules, "PACS", "10.9.9.9", pacs[:1])  # O missing
    assert not caller_allowed(rules, "PACS", "10.9.9.9", ())  # no certificate
    assert not caller_allowed(rules, "CT", "10.9.9.9", pacs)  # CT is bound to an address
    assert caller_allowed(rules, "CT", "10.0.0.5")
    assert caller_allowed((), "ANYONE", "10.9.9.9")


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(tmp_path, port):
    message = config_error(tmp_path, gateway=f"port = {port}")
    assert message == f"gateway.port: port {port} is out of range; use 1-65535"


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_are_accepted(tmp_path, port):
    assert load_settings(write_config(tmp_path, gateway=f"port = {port}")).gateway.port == port


def test_destination_port_out_of_range_names_the_destination(tmp_path):
    body = '[[destinations]]\nname = "a"\nae_title = "A"\nport = 70000'
    assert config_error(tmp_path, body).startswith("destinations[0].port: port 70000")


def test_unknown_deidentify_option_names_its_index(tmp_path):
    body = '[deidentify]\noptions = ["clean_descriptors", "retain_uid"]'
    message = config_error(tmp_path, body)
    assert message.startswith("deidentify.options[1]: unknown option 'retain_uid'; choose from ")
    assert "retain_uids" in message  # the list of valid names helps the fix


def test_non_string_deidentify_option_names_its_index(tmp_path):
    message = config_error(tmp_path, '[deidentify]\noptions = ["retain_uids", 5]')
    assert message == "deidentify.options[1]: expected a string, got int"


def test_both_long_date_options_are_refused(tmp_path):
    body = '[deidentify]\noptions = ["retain_long_full_dates", "retain_long_modified_dates"]'
    message = config_error(tmp_path, body)
    assert message.startswith("deidentify.options: ")
    assert "'retain_long_full_dates' and 'retain_long_modified_dates' exclude each other" in message


def test_each_long_date_option_alone_is_accepted(tmp_path):
    for option in ("retain_long_full_dates", "retain_long_modified_dates"):
        settings = load_settings(write_config(tmp_path, f'[deidentify]\noptions = ["{option}"]'))
        assert settings.deidentify.options == (option,)


def test_clean_words_file_reaches_the_policy(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# site protocol names\nNEUROVASC\nangio3\n")
    settings = load_settings(write_config(
        tmp_path, f'[deidentify]\noptions = ["clean_descriptors"]\nclean_words_file = "{words}"'))
    assert settings.policy().clean_words == frozenset({"NEUROVASC", "ANGIO3"})


def test_bad_clean_words_file_names_the_key_and_the_line(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("NEUROVASC\ntwo words\n")
    message = config_error(tmp_path, f'[deidentify]\nclean_words_file = "{words}"')
    assert message.startswith("deidentify.clean_words_file: ")
    assert f"{words}, line 2" in message


def test_missing_clean_words_file_names_the_key(tmp_path):
    message = config_error(tmp_path, f'[deidentify]\nclean_words_file = "{tmp_path / "none.txt"}"')
    assert message.startswith("deidentify.clean_words_file: ")


def test_table_mode_without_table_file(tmp_path):
    message = config_error(tmp_path, '[deidentify.patient]\nmode = "table"')
    assert message.startswith("deidentify.patient.table_file: mode 'table' needs a CSV file")


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_unreadable_table_file(tmp_path, kind):
    # (Tests may run as root, so unreadability comes from a missing file or a folder, not modes.)
    target = tmp_path / ("nowhere.csv" if kind == "missing" else "a-folder")
    if kind == "folder":
        target.mkdir()
    body = f'[deidentify.patient]\nmode = "table"\ntable_file = "{target}"'
    message = config_error(tmp_path, body)
    assert message.startswith(f"deidentify.patient.table_file: cannot read {target} (")


def test_table_row_without_subject_names_file_and_line(tmp_path):
    table = tmp_path / "subjects.csv"
    table.write_text("P1,SUBJ-1\nP2\n")
    body = f'[deidentify.patient]\nmode = "table"\ntable_file = "{table}"'
    message = config_error(tmp_path, body)
    assert message == (
        f"deidentify.patient.table_file: {table} line 2: expected 'PatientID,subject ID'"
    )


def test_bad_patient_mode(tmp_path):
    message = config_error(tmp_path, '[deidentify.patient]\nmode = "hashed"')
    assert message.startswith("deidentify.patient.mode: 'hashed' is not one of")


@pytest.mark.parametrize("root", ["1.02.3", "1.2.", ".1.2", "1.2.a", "1..2", "1." + "2" * 60])
def test_bad_uid_root(tmp_path, root):
    message = config_error(tmp_path, f'[deidentify]\nuid_root = "{root}"')
    assert message.startswith(f"deidentify.uid_root: '{root}' is not a UID root")


def test_good_uid_root_and_empty_default(tmp_path):
    settings = load_settings(write_config(tmp_path, '[deidentify]\nuid_root = "1.2.826.0.1.3"'))
    assert settings.deidentify.uid_root == "1.2.826.0.1.3"
    assert load_settings(write_config(tmp_path, '[deidentify]\nuid_root = ""')
                         ).deidentify.uid_root == "2.25"


def test_duplicate_destination_names(tmp_path):
    body = (
        '[[destinations]]\nname = "archive"\nae_title = "A1"\n'
        '[[destinations]]\nname = "archive"\nae_title = "A2"\n'
    )
    message = config_error(tmp_path, body)
    assert message == "destinations[1].name: 'archive' is used twice; names must be unique"


def test_destination_without_ae_title(tmp_path):
    body = (
        '[[destinations]]\nname = "one"\nae_title = "A1"\n'
        '[[destinations]]\nname = "two"\nhost = "10.0.0.2"\n'
    )
    message = config_error(tmp_path, body)
    assert message == "destinations[1].ae_title: missing; give the archive's AE title"


def test_destination_without_name(tmp_path):
    message = config_error(tmp_path, '[[destinations]]\nae_title = "A1"\n')
    assert message.startswith("destinations[0].name: every destination needs a unique name")


def test_destination_unknown_key_suggests(tmp_path):
    body = '[[destinations]]\nname = "one"\nae_title = "A1"\nhots = "x"\n'
    assert config_error(tmp_path, body) == "destinations[0].hots: unknown key; did you mean 'host'?"


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[gateway\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: not valid TOML")


def test_config_error_through_the_cli_exits_2_and_names_the_key(tmp_path, capsys):
    config = write_config(tmp_path, gateway="prot = 1")
    status = main(["anonymize", "--config", str(config), str(tmp_path / "src"),
                   str(tmp_path / "dst")])
    assert status == 2
    err = capsys.readouterr().err
    assert err == "error: gateway.prot: unknown key; did you mean 'port'?\n"


def test_config_error_as_a_subprocess_exits_2(tmp_path):
    config = write_config(tmp_path, gateway="port = 0")
    (tmp_path / "src").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config),
         str(tmp_path / "src"), str(tmp_path / "dst")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "gateway.port: port 0 is out of range" in proc.stderr
    assert not (tmp_path / "dst").exists()


# --- the secret ----------------------------------------------------------------------------------


def test_no_secret_is_a_secret_error_that_says_how_to_fix_it(tmp_path):
    settings = load_settings(write_config(tmp_path, secret=False))
    assert settings.secret is None
    with pytest.raises(SecretError) as info:
        settings.require_secret()
    message = str(info.value)
    assert "dicom-gateway init-secret" in message
    assert SECRET_ENV in message


def test_no_secret_stops_anonymize_with_exit_2(tmp_path, capsys):
    config = write_config(tmp_path, secret=False)
    (tmp_path / "src").mkdir()
    status = main(["anonymize", "--config", str(config), str(tmp_path / "src"),
                   str(tmp_path / "dst")])
    assert status == 2
    err = capsys.readouterr().err
    assert "init-secret" in err and SECRET_ENV in err
    assert not (tmp_path / "dst").exists()


def test_secret_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET_HEX)
    settings = load_settings(write_config(tmp_path, secret=False))
    assert settings.require_secret() == bytes.fromhex(SECRET_HEX)


def test_secret_file_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "ab" * 32)
    settings = load_settings(write_config(tmp_path))
    assert settings.require_secret() == bytes.fromhex(SECRET_HEX)


@pytest.mark.parametrize("value", ["ab" * 15, "short secret"])  # 15 bytes of hex; 12 raw bytes
def test_too_short_secret_from_the_environment(tmp_path, monkeypatch, value):
    monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(SecretError) as info:
        load_settings(write_config(tmp_path, secret=False))
    assert str(info.value).startswith(f"{SECRET_ENV}: the secret is too short")
    assert value not in str(info.value)


def test_too_short_secret_file(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "secret.key").write_text("ab" * 15 + "\n")
    with pytest.raises(SecretError) as info:
        load_settings(config)
    assert str(info.value).startswith("gateway.secret_file: the secret is too short (15 bytes")


def test_sixteen_byte_secret_is_enough(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "cd" * 16)
    settings = load_settings(write_config(tmp_path, secret=False))
    assert settings.require_secret() == b"\xcd" * 16


def test_secret_never_appears_in_repr_or_str(tmp_path, monkeypatch):
    settings = load_settings(write_config(tmp_path))
    assert settings.secret is not None
    shown = [repr(settings), str(settings), repr(settings.secret), str(settings.secret),
             f"{settings.secret}"]
    for text in shown:
        assert SECRET_HEX not in text.lower()
        assert SECRET_HEX[:16] not in text.lower()
    assert str(settings.secret) == "Secret('********')"
    # and the same for a secret from the environment
    monkeypatch.setenv(SECRET_ENV, "ab" * 32)
    (tmp_path / "env").mkdir()
    env_settings = load_settings(write_config(tmp_path / "env", secret=False))
    assert env_settings.secret is not None
    assert "ab" * 8 not in repr(env_settings)
    assert "ab" * 8 not in str(env_settings.secret)


# --- init-secret ---------------------------------------------------------------------------------


def test_init_secret_writes_a_private_64_hex_file(tmp_path, capsys):
    path = tmp_path / "keys" / "secret.key"
    assert main(["init-secret", str(path)]) == 0
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert text.strip() not in out  # the key is not echoed
    # it is a key the settings accept
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\nsecret_file = "{path}"\n')
    assert load_settings(config).require_secret() == bytes.fromhex(text.strip())


def test_init_secret_twice_gives_different_keys(tmp_path):
    assert main(["init-secret", str(tmp_path / "a")]) == 0
    assert main(["init-secret", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a").read_text() != (tmp_path / "b").read_text()


def test_init_secret_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "secret.key"
    path.write_text(SECRET_HEX + "\n")
    assert main(["init-secret", str(path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert path.read_text() == SECRET_HEX + "\n"


def test_init_secret_exist_ok_keeps_the_file(tmp_path):
    path = tmp_path / "secret.key"
    path.write_text(SECRET_HEX + "\n")
    assert main(["init-secret", str(path), "--exist-ok"]) == 0
    assert path.read_text() == SECRET_HEX + "\n"


def test_init_secret_as_a_subprocess(tmp_path):
    path = tmp_path / "secret.key"
    command = [sys.executable, "-m", "gateway.cli", "init-secret", str(path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    content = path.read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    ok = subprocess.run([*command, "--exist-ok"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    assert path.read_text() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- the patient table ---------------------------------------------------------------------------


def test_patient_table_with_header_comments_and_blank_lines(tmp_path):
    table = tmp_path / "subjects.csv"
    table.write_text(
        "\ufeffPatient ID,Subject ID\n"
        "# exported 2024-05-01 by the study office\n"
        "\n"
        "1CT1,SUBJ-001\n"
        "  4MR1 , SUBJ-002 \n"
        '"ID,with comma",SUBJ-003\n',
        encoding="utf-8",
    )
    body = f'[deidentify.patient]\nmode = "table"\ntable_file = "{table}"'
    settings = load_settings(write_config(tmp_path, body))
    assert dict(settings.deidentify.patient.table) == {
        "1CT1": "SUBJ-001",
        "4MR1": "SUBJ-002",
        "ID,with comma": "SUBJ-003",
    }
    assert settings.policy().patient.mode == "table"


def test_patient_table_without_header(tmp_path):
    table = tmp_path / "subjects.csv"
    table.write_text("1CT1,SUBJ-001\n")
    body = f'[deidentify.patient]\nmode = "table"\ntable_file = "{table}"'
    settings = load_settings(write_config(tmp_path, body))
    assert dict(settings.deidentify.patient.table) == {"1CT1": "SUBJ-001"}


def test_patient_table_not_in_repr(tmp_path):
    table = tmp_path / "subjects.csv"
    table.write_text("ORIGINAL-ID-123,SUBJ-001\n")
    body = f'[deidentify.patient]\nmode = "table"\ntable_file = "{table}"'
    assert "ORIGINAL-ID-123" not in repr(load_settings(write_config(tmp_path, body)))


def test_forward_associations_must_be_at_least_one(tmp_path):
    assert config_error(tmp_path, "[forward]\nassociations = 0") == (
        "forward.associations: must be 1 or more")
    assert load_settings(write_config(tmp_path, "[forward]\nassociations = 4")).forward.associations == 4


def test_forward_nice_is_a_unix_nice_increment(tmp_path):
    assert load_settings(write_config(tmp_path, "")).forward.nice == 10
    assert load_settings(write_config(tmp_path, "[forward]\nnice = 0")).forward.nice == 0
    assert config_error(tmp_path, "[forward]\nnice = 20") == "forward.nice: must be 0 to 19"
    assert config_error(tmp_path, "[forward]\nnice = -1") == "forward.nice: must be 0 to 19"
