"""The offline command end to end, on real files: anonymize, map, quarantine."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from gateway.cli import main
from gateway.deid.engine import patient_key, pseudonymous_patient_id
from gateway.deid.uids import keyed_uid
from gateway.settings import SECRET_ENV

SECRET_A = bytes(range(32)).hex()
SECRET_B = bytes(range(100, 132)).hex()
PSEUDONYM = re.compile(r"ANON[0-9A-F]{16}")

# Good instances copied into the source folder: name in SRC -> pydicom test file.
GOOD = {
    "CT_small.dcm": "CT_small.dcm",
    "MR_small.dcm": "MR_small.dcm",
    "sub/rtplan.dcm": "rtplan.dcm",
    "sub/deeper/JPEG2000.dcm": "JPEG2000.dcm",
    "sub/JPEG-lossy.dcm": "JPEG-lossy.dcm",  # the same patient (8NM1) as JPEG2000.dcm
}
BROKEN = ["broken/truncated.dcm", "broken/garbage.dcm", "broken/no_sop_uid.dcm"]
NOT_DICOM = {
    "DICOMDIR": "a DICOMDIR (media directory), not an instance",
    "empty.dcm": "empty file",
    "notes.txt": "no DICOM preamble and no data set",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("DICOM_GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the project's var/


def sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def write_config(root: Path, secret_hex: str = SECRET_A, patient: str = "") -> Path:
    """Config with data folder and secret under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "secret.key"
    secret.write_text(secret_hex + "\n")
    config = root / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{root / "var"}"\nsecret_file = "{secret}"\n'
        f"[deidentify.patient]\n{patient}\n"
    )
    return config


def make_clean_src(src: Path) -> Path:
    for name, source in GOOD.items():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample(source), target)
    return src


def make_mixed_src(src: Path) -> Path:
    make_clean_src(src)
    ct = sample("CT_small.dcm").read_bytes()
    (src / "broken").mkdir()
    (src / "broken/truncated.dcm").write_bytes(ct[: len(ct) // 2])
    (src / "broken/garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    ds = dcmread(sample("CT_small.dcm"))
    del ds.SOPInstanceUID
    ds.save_as(src / "broken/no_sop_uid.dcm")
    dicomdir = get_testdata_file("DICOMDIR")
    assert dicomdir is not None
    shutil.copyfile(dicomdir, src / "DICOMDIR")
    (src / "empty.dcm").write_bytes(b"")
    (src / "notes.txt").write_text("scanned on the CT in room 3\n")
    return src


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def anonymize(capsys, config: Path, src: Path, dst: Path) -> tuple[int, dict]:
    status, out, err = cli(capsys, "anonymize", "--config", config, src, dst, "--json")
    return status, json.loads(out)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def quarantine_list(capsys, config: Path) -> list[dict]:
    status, out, _ = cli(capsys, "quarantine", "list", "--config", config, "--json")
    assert status == 0
    return json.loads(out)


def lookup_lines(capsys, config: Path, term: str) -> tuple[int, list[list[str]]]:
    status, out, _ = cli(capsys, "map", "lookup", "--config", config, term)
    return status, [line.split("\t") for line in out.splitlines()]


def output_for(dst: Path, original: Path, secret_hex: str = SECRET_A) -> Path:
    """Where the clean copy of ``original`` must be: the documented keyed pseudonyms
    (``ANON`` + HMAC of the patient, ``2.25.`` + HMAC of each UID), so the same secret gives
    the same names on every machine."""
    ds = dcmread(original)
    secret = bytes.fromhex(secret_hex)
    path = (
        dst / pseudonymous_patient_id(secret, patient_key(ds), "ANON")
        / keyed_uid(secret, ds.StudyInstanceUID) / keyed_uid(secret, ds.SeriesInstanceUID)
        / f"{keyed_uid(secret, ds.SOPInstanceUID)}.dcm"
    )
    assert path.is_file(), (original, path)
    return path


# --- a mixed folder ------------------------------------------------------------------------------


def test_mixed_folder_end_to_end(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    src = make_mixed_src(tmp_path / "export")
    dst = tmp_path / "anonymized"

    # A real process, for the exit status a script sees.
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config), str(src),
         str(dst), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files_in"] == len(GOOD) + len(BROKEN) + len(NOT_DICOM) == 11
    assert summary["written"] == len(GOOD)
    assert summary["quarantined"] == len(BROKEN)
    assert summary["quarantine_reasons"] == {"malformed": 3}
    assert summary["skipped"] == len(NOT_DICOM)
    assert summary["skip_reasons"] == {reason: 1 for reason in NOT_DICOM.values()}
    unhandled = {u["keyword"]: u["files"] for u in summary["unhandled_attributes"]}
    assert unhandled["Manufacturer"] == 5  # every written file has one; reported by name only
    assert "CompressedSamples" not in proc.stdout and "1CT1" not in proc.stdout

    # DST holds exactly the five clean instances, named by what is inside them.
    files = tree(dst)
    assert len(files) == len(GOOD)
    originals = {name: dcmread(src / name) for name in GOOD}
    original_uids = {str(ds.SOPInstanceUID) for ds in originals.values()}
    patient_folders = set()
    for rel in files:
        parts = Path(rel).parts
        assert len(parts) == 4 and parts[3].endswith(".dcm") and not parts[3].startswith(".")
        ds = dcmread(dst / rel)
        assert parts == (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                         f"{ds.SOPInstanceUID}.dcm")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert PSEUDONYM.fullmatch(ds.PatientID)
        assert str(ds.PatientName) == ds.PatientID
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID.startswith("2.25.")
        assert str(ds.SOPInstanceUID) not in original_uids
        patient_folders.add(parts[0])
    # four patients: both JPEG files belong to 8NM1 and share a folder
    assert len(patient_folders) == 4

    # No original name or ID survives anywhere in DST.
    identifiers = set()
    for ds in originals.values():
        identifiers.add(str(ds.PatientID).encode())
        identifiers.add(str(ds.PatientName).encode())
        family = str(ds.PatientName).split("^")[0]
        if len(family) >= 6:  # short ones ("Last") could occur by chance in pixel data
            identifiers.add(family.encode())
    assert b"CompressedSamples^CT1" in identifiers and b"id00001" in identifiers
    for rel in files:
        data = (dst / rel).read_bytes()
        for value in identifiers:
            assert value not in data, (rel, value)

    # Pixel data passes byte for byte (native and encapsulated).
    for name in ("CT_small.dcm", "sub/deeper/JPEG2000.dcm"):
        original = originals[name]
        out = dcmread(output_for(dst, src / name))
        assert out.PixelData == original.PixelData
        assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID

    # Each quarantined file has one entry, with its original bytes and no identifying value.
    entries = quarantine_list(capsys, config)
    assert sorted(Path(e["source"]).relative_to(src).as_posix() for e in entries) == sorted(BROKEN)
    assert {e["reason"] for e in entries} == {"malformed"}
    assert {e["error_class"] for e in entries} == {"MalformedInstance"}
    qdir = tmp_path / "site" / "var" / "quarantine"
    for e in entries:
        original = (Path(e["source"])).read_bytes()
        assert (qdir / e["id"] / "original.dcm").read_bytes() == original
        assert e["size"] == len(original)
        assert e["context"]["destination"] == str(dst)
        assert "CompressedSamples" not in e["message"] and "1CT1" not in e["message"]
    messages = {Path(e["source"]).name: e["message"] for e in entries}
    assert messages["no_sop_uid.dcm"] == "SOPInstanceUID is missing"
    assert messages["truncated.dcm"].startswith("truncated")

    # The map knows each written instance: its UID's pseudonym is an output file name.
    for name, ds in originals.items():
        status, lines = lookup_lines(capsys, config, str(ds.SOPInstanceUID))
        assert status == 0
        [(kind, original, pseudonym, *_)] = lines
        assert (kind, original) == ("uid", str(ds.SOPInstanceUID))
        assert sum(1 for rel in files if rel.endswith(f"/{pseudonym}.dcm")) == 1, name


def test_text_summary(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    src = make_mixed_src(tmp_path / "export")
    status, out, _ = cli(capsys, "anonymize", "--config", config, src, tmp_path / "out")
    assert status == 1
    lines = out.splitlines()
    assert lines[:9] == [
        "files in:     11",
        "written:      5",
        "quarantined:  3",
        "  malformed: 3",
        "skipped:      3 (not DICOM instances)",
        "  a DICOMDIR (media directory), not an instance: 1",
        "  empty file: 1",
        "  no DICOM preamble and no data set: 1",
        "attributes not in PS3.15 Table E.1-1, kept (review them, or set "
        "deidentify.strict = true to remove):",
    ]
    assert "  (0008,0070) Manufacturer: 5 files" in lines
    assert lines[-1] == "see `dicom-gateway quarantine list`"


def test_clean_folder_exits_0(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    src = make_clean_src(tmp_path / "export")
    status, summary = anonymize(capsys, config, src, tmp_path / "out")
    assert status == 0
    assert (summary["files_in"], summary["written"], summary["quarantined"],
            summary["skipped"]) == (5, 5, 0, 0)
    assert quarantine_list(capsys, config) == []


def test_clean_folder_exits_0_as_a_subprocess(tmp_path):
    config = write_config(tmp_path / "site")
    src = make_clean_src(tmp_path / "export")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config), str(src),
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "written:      5" in proc.stdout
    assert len(tree(tmp_path / "out")) == 5


# --- the same pseudonyms on every run --------------------------------------------------------------


def test_two_runs_give_the_same_tree_and_a_consistent_map(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    src = make_clean_src(tmp_path / "export")
    dst1, dst2 = tmp_path / "run1", tmp_path / "run2"
    assert anonymize(capsys, config, src, dst1)[0] == 0
    assert anonymize(capsys, config, src, dst2)[0] == 0

    assert tree(dst1) == tree(dst2)
    for rel in tree(dst1):
        one, two = dcmread(dst1 / rel), dcmread(dst2 / rel)
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "FrameOfReferenceUID"):
            assert one.get(keyword) == two.get(keyword), (rel, keyword)

    # map lookup: original -> the pseudonym used as the folder name, and back
    ct_out = output_for(dst1, src / "CT_small.dcm")
    folder = ct_out.relative_to(dst1).parts[0]
    status, lines = lookup_lines(capsys, config, "1CT1")
    assert status == 0
    [(kind, original, pseudonym, first, last, seen)] = lines
    assert (kind, original, pseudonym, seen) == ("patient", "1CT1", folder, "seen 2")
    assert re.fullmatch(r"first \d{4}-\d\d-\d\d", first)
    assert re.fullmatch(r"last \d{4}-\d\d-\d\d", last)
    status, lines = lookup_lines(capsys, config, folder)
    assert status == 0
    assert [line[:3] for line in lines] == [["patient", "1CT1", folder]]

    # map export: the whole key as CSV, counted per run (and per file)
    status, out, _ = cli(capsys, "map", "export", "--config", config, "--format", "csv")
    assert status == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["kind", "original", "pseudonym", "first_seen", "last_seen", "count"]
    patients = {r[1]: r for r in rows[1:] if r[0] == "patient"}
    assert set(patients) == {"1CT1", "4MR1", "id00001", "8NM1"}
    assert patients["1CT1"][2] == folder
    assert patients["1CT1"][5] == "2"
    assert patients["8NM1"][5] == "4"  # two files a run
    assert patients["1CT1"][3] <= patients["1CT1"][4]
    uid_rows = {r[1]: r for r in rows[1:] if r[0] == "uid"}
    ct_uid = str(dcmread(src / "CT_small.dcm").SOPInstanceUID)
    assert uid_rows[ct_uid][2] == ct_out.stem
    assert uid_rows[ct_uid][5] == "2"

    # export to a file: the re-identification key is private; the audit saw every look-up
    key = tmp_path / "key.csv"
    status, out, _ = cli(capsys, "map", "export", "--config", config, "--kind", "patient",
                         "--output", key)
    assert status == 0 and out == ""
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_rows = list(csv.reader(key.open()))
    assert [r[0] for r in key_rows[1:]] == ["patient"] * 4

    from gateway.settings import load_settings
    from gateway.state import PseudonymStore

    store = PseudonymStore(load_settings(config).database_url)
    try:
        actions = [(action, query) for _, action, query, _ in store.audit_entries()]
    finally:
        store.close()
    assert actions == [("map lookup", "1CT1"), ("map lookup", folder), ("map export", "all"),
                       ("map export", "patient")]


def test_lookup_of_an_unknown_term_exits_1(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    status, out, err = cli(capsys, "map", "lookup", "--config", config, "NOBODY")
    assert (status, out) == (1, "")
    assert "no entry" in err


def test_a_different_secret_gives_different_pseudonyms(tmp_path, capsys):
    src = make_clean_src(tmp_path / "export")
    config_a = write_config(tmp_path / "site-a", SECRET_A)
    config_b = write_config(tmp_path / "site-b", SECRET_B)
    assert anonymize(capsys, config_a, src, tmp_path / "a")[0] == 0
    assert anonymize(capsys, config_b, src, tmp_path / "b")[0] == 0
    parts_a = {part for rel in tree(tmp_path / "a") for part in Path(rel).parts}
    parts_b = {part for rel in tree(tmp_path / "b") for part in Path(rel).parts}
    assert len(parts_a) == len(parts_b)
    assert parts_a.isdisjoint(parts_b)  # no patient, study, series or instance name in common


# --- folders that contain each other --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["src-in-dst", "dst-in-src", "same"])
def test_nested_folders_are_refused(tmp_path, capsys, layout):
    config = write_config(tmp_path / "site")
    outer = tmp_path / "outer"
    if layout == "src-in-dst":
        src, dst = make_clean_src(outer / "export"), outer
    elif layout == "dst-in-src":
        src, dst = make_clean_src(outer), outer / "anonymized"
    else:
        src = dst = make_clean_src(outer)
    before = tree(outer)
    status, out, err = cli(capsys, "anonymize", "--config", config, src, dst)
    assert status == 2
    assert err == "error: SRC and DST must not contain each other; choose a separate DST\n"
    assert out == ""
    assert tree(outer) == before


def test_src_in_dst_as_a_subprocess(tmp_path):
    config = write_config(tmp_path / "site")
    src = make_clean_src(tmp_path / "out" / "in")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config), str(src),
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "must not contain each other" in proc.stderr


def test_missing_src_is_a_usage_error(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    status, _, err = cli(capsys, "anonymize", "--config", config, tmp_path / "nope",
                         tmp_path / "out")
    assert status == 2
    assert "is not a folder" in err
    assert not (tmp_path / "out").exists()


# --- patient table mode and quarantine release ---------------------------------------------------


def test_table_mode_quarantine_release_and_purge(tmp_path, capsys):
    table = tmp_path / "subjects.csv"
    table.write_text("PatientID,Subject\n# study 17\n1CT1,SUBJ-001\n")
    config = write_config(tmp_path / "site",
                          patient=f'mode = "table"\ntable_file = "{table}"')
    src = tmp_path / "export"
    src.mkdir()
    shutil.copyfile(sample("CT_small.dcm"), src / "ct.dcm")
    shutil.copyfile(sample("MR_small.dcm"), src / "mr.dcm")  # patient 4MR1, not in the table
    ct = sample("CT_small.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(ct[: len(ct) // 2])
    dst = tmp_path / "anonymized"

    status, summary = anonymize(capsys, config, src, dst)
    assert status == 1
    assert (summary["written"], summary["quarantined"]) == (1, 2)
    assert summary["quarantine_reasons"] == {"unknown-patient": 1, "malformed": 1}
    [ct_rel] = tree(dst)
    assert Path(ct_rel).parts[0] == "SUBJ-001"
    out = dcmread(dst / ct_rel)
    assert (out.PatientID, str(out.PatientName)) == ("SUBJ-001", "SUBJ-001")

    entries = {Path(e["source"]).name: e for e in quarantine_list(capsys, config)}
    assert set(entries) == {"mr.dcm", "truncated.dcm"}
    unknown = entries["mr.dcm"]
    assert unknown["reason"] == "unknown-patient"
    assert "4MR1" not in unknown["message"]

    # Release before the table is fixed: still fails, stays, the attempt is counted.
    status, out, err = cli(capsys, "quarantine", "release", "--config", config, unknown["id"])
    assert status == 1
    assert f"{unknown['id']}: still fails: unknown-patient" in err
    kept = {e["id"]: e for e in quarantine_list(capsys, config)}
    assert set(kept) == {unknown["id"], entries["truncated.dcm"]["id"]}
    assert kept[unknown["id"]]["context"]["release_attempts"] == 1
    assert tree(dst) == [ct_rel]

    # Add the patient to the table: release writes it to the original DST and forgets it.
    with table.open("a") as handle:
        handle.write("4MR1,SUBJ-002\n")
    status, out, err = cli(capsys, "quarantine", "release", "--config", config, unknown["id"])
    assert status == 0, err
    assert out == f"{unknown['id']}: released to {dst}\n"
    released = [rel for rel in tree(dst) if rel != ct_rel]
    assert len(released) == 1 and Path(released[0]).parts[0] == "SUBJ-002"
    mr = dcmread(dst / released[0])
    assert mr.PatientID == "SUBJ-002"
    assert mr.PixelData == dcmread(sample("MR_small.dcm")).PixelData
    assert [e["id"] for e in quarantine_list(capsys, config)] == [entries["truncated.dcm"]["id"]]
    status, lines = lookup_lines(capsys, config, "SUBJ-002")
    assert status == 0 and [line[:3] for line in lines] == [["patient", "4MR1", "SUBJ-002"]]

    # The malformed one cannot be fixed by configuration: --all keeps it, exit 1.
    status, _, err = cli(capsys, "quarantine", "release", "--config", config, "--all")
    assert status == 1
    assert "still fails: malformed" in err
    assert len(quarantine_list(capsys, config)) == 1

    # show, then purge everything
    truncated_id = entries["truncated.dcm"]["id"]
    status, out, _ = cli(capsys, "quarantine", "show", "--config", config, truncated_id)
    assert status == 0
    assert json.loads(out)["reason"] == "malformed"
    status, out, _ = cli(capsys, "quarantine", "purge", "--config", config, "--all")
    assert (status, out) == (0, "purged 1\n")
    assert quarantine_list(capsys, config) == []
    assert list((tmp_path / "site" / "var" / "quarantine").iterdir()) == []
    assert len(tree(dst)) == 2  # purging never touches the output


def test_release_uses_the_original_destination_from_another_directory(
    tmp_path, capsys, monkeypatch
):
    """A relative DST is remembered as the folder it named, not re-read from a later cwd."""
    table = tmp_path / "subjects.csv"
    table.write_text("")
    config = write_config(tmp_path / "site",
                          patient=f'mode = "table"\ntable_file = "{table}"')
    work = tmp_path / "work"
    (work / "export").mkdir(parents=True)
    shutil.copyfile(sample("CT_small.dcm"), work / "export" / "ct.dcm")
    monkeypatch.chdir(work)
    status, summary = anonymize(capsys, config, Path("export"), Path("anonymized"))
    assert (status, summary["quarantine_reasons"]) == (1, {"unknown-patient": 1})

    table.write_text("1CT1,SUBJ-001\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    status, _, err = cli(capsys, "quarantine", "release", "--config", config, "--all")
    assert status == 0, err
    assert [Path(rel).parts[0] for rel in tree(work / "anonymized")] == ["SUBJ-001"]
    assert list(elsewhere.iterdir()) == []


def test_release_to_another_folder(tmp_path, capsys):
    table = tmp_path / "subjects.csv"
    table.write_text("")
    config = write_config(tmp_path / "site",
                          patient=f'mode = "table"\ntable_file = "{table}"')
    src = tmp_path / "export"
    src.mkdir()
    shutil.copyfile(sample("CT_small.dcm"), src / "ct.dcm")
    assert anonymize(capsys, config, src, tmp_path / "anonymized")[0] == 1
    table.write_text("1CT1,SUBJ-001\n")
    status, _, _ = cli(capsys, "quarantine", "release", "--config", config, "--all",
                       "--to", tmp_path / "elsewhere")
    assert status == 0
    assert [Path(r).parts[0] for r in tree(tmp_path / "elsewhere")] == ["SUBJ-001"]
    assert not (tmp_path / "anonymized").exists()


def test_quarantine_commands_with_unknown_ids(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    status, _, err = cli(capsys, "quarantine", "show", "--config", config, "nope")
    assert (status, err) == (1, "no quarantine entry nope\n")
    status, _, err = cli(capsys, "quarantine", "release", "--config", config, "nope")
    assert (status, err) == (2, "error: no quarantine entry nope\n")
    status, _, err = cli(capsys, "quarantine", "purge", "--config", config, "nope")
    assert status == 2
    with pytest.raises(SystemExit) as info:  # neither ids nor --all: a usage error
        main(["quarantine", "purge", "--config", str(config)])
    assert info.value.code == 2


def test_purge_older_than_keeps_recent_entries(tmp_path, capsys):
    config = write_config(tmp_path / "site")
    src = tmp_path / "export"
    src.mkdir()
    (src / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    assert anonymize(capsys, config, src, tmp_path / "out")[0] == 1
    status, out, _ = cli(capsys, "quarantine", "purge", "--config", config, "--older-than", "1")
    assert (status, out) == (0, "purged 0\n")
    assert len(quarantine_list(capsys, config)) == 1
    status, out, _ = cli(capsys, "quarantine", "purge", "--config", config, "--older-than", "0")
    assert (status, out) == (0, "purged 1\n")
    assert quarantine_list(capsys, config) == []
