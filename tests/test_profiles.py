"""Per-destination profiles: the configuration, the edits, labels and the leak guard over them."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from deid_helpers import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, SECRET, base_dataset, write
from test_settings import write_config

from gateway.cli import main
from gateway.deid.edits import EditError, Edits, Target, apply_edits, parse_target, study_number
from gateway.deidentify import deidentify_bytes
from gateway.errors import ConfigError, LeakDetected
from gateway.labels import MissingLabel
from gateway.profiles import Original, edited, profiles_in_use
from gateway.settings import ConfigProblems, load_settings, located_problems

ACCESSION = "ACC12345"


def labels_csv(tmp_path: Path, rows: str = f"{ACCESSION},Glioblastoma,TF-0042\n") -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("AccessionNumber,diagnosis,case\n" + rows)
    return path


def two_profiles(tmp_path: Path, edits: str = "", labels: bool = True, extra: str = "") -> Path:
    csv_file = labels_csv(tmp_path)
    label_table = (f'[labels]\nfile = "{csv_file}"\nkey = "AccessionNumber"\n'
                   'missing = "quarantine"\n') if labels else ""
    return write_config(tmp_path, f"""
[deidentify]
options = ["retain_long_modified_dates"]
strict = true

[profiles.teaching]
options = ["retain_patient_characteristics"]

[profiles.teaching.edits]
{edits or 'set = { PatientName = "{label.diagnosis}", ClinicalTrialSiteID = "SITE-3" }'}

{label_table}
{extra}
[[destinations]]
name = "research"
ae_title = "RESEARCH"
port = 11113

[[destinations]]
name = "teaching"
ae_title = "TFS"
port = 11114
profile = "teaching"
""")


# --- configuration --------------------------------------------------------------------------------


def test_a_profile_inherits_deidentify_and_its_options_replace_the_list(tmp_path):
    settings = load_settings(two_profiles(tmp_path))

    teaching = settings.profile("teaching")
    assert teaching.deidentify.options == ("retain_patient_characteristics",)
    assert teaching.deidentify.strict is True  # inherited
    assert settings.profile("default").deidentify.options == ("retain_long_modified_dates",)
    assert [d.profile for d in settings.destinations] == ["default", "teaching"]
    assert settings.used_profiles() == ("default", "teaching")
    assert settings.labels is not None and settings.labels.columns == ("diagnosis", "case")


def test_every_profile_mistake_is_listed_with_its_key_and_line(tmp_path):
    path = two_profiles(tmp_path, edits="""remove = ["StudyDat", "(0019,0010)"]
keep = ["(0019,xx10) GEMS_ACQU_01"]
set = { PatientName = "{label.diagnosos}", PatientAge = "{patient.name}" }""",
                        extra='[profiles.unused]\noptions = ["no_such_option"]\n')
    text = path.read_text()
    text = text.replace('profile = "teaching"', 'profile = "teachng"')
    path.write_text(text)

    with pytest.raises(ConfigProblems) as info:
        load_settings(path)
    problems = located_problems(info.value, path)
    by_key = {p.key: p for p in problems}

    assert "'StudyDat' is not a DICOM keyword" in by_key["profiles.teaching.edits.remove[0]"].message
    assert "needs its creator" in by_key["profiles.teaching.edits.remove[1]"].message
    assert "has no 'diagnosos' column" in by_key["profiles.teaching.edits.set.PatientName"].message
    assert "{patient.name} is not a template field" in \
        by_key["profiles.teaching.edits.set.PatientAge"].message
    assert "no profile 'teachng'" in by_key["destinations[1].profile"].message
    assert "no destination uses it" in by_key["profiles.unused"].message
    assert "unknown option" in by_key["profiles.unused.options[0]"].message
    lines = text.splitlines()
    assert lines[by_key["profiles.teaching.edits.remove[0]"].line - 1].startswith("remove =")
    assert lines[by_key["destinations[1].profile"].line - 1].startswith("profile =")
    assert lines[by_key["profiles.unused"].line - 1] == "[profiles.unused]"


def test_a_mistake_in_deidentify_is_reported_once_not_again_for_each_profile(tmp_path):
    path = two_profiles(tmp_path)
    path.write_text(path.read_text().replace("strict = true", 'strict = "yes"'))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert not isinstance(info.value, ConfigProblems)
    assert str(info.value).startswith("deidentify.strict: expected")


def test_labels_file_without_the_key_column_names_the_key(tmp_path):
    path = two_profiles(tmp_path)
    (tmp_path / "labels.csv").write_text("Accession,diagnosis,case\nX,Y,Z\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "labels.file:" in str(info.value)
    assert "no 'AccessionNumber' column" in str(info.value)


def test_a_template_over_labels_needs_a_labels_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(two_profiles(tmp_path, labels=False))
    assert str(info.value).startswith("profiles.teaching.edits.set.PatientName: {label.diagnosis} "
                                      "needs a [labels] section")


def test_check_config_prints_profile_problems_with_lines(tmp_path, capsys):
    path = two_profiles(tmp_path, edits='remove = ["NoSuchKeyword"]')
    assert main(["check-config", "--config", str(path)]) != 0
    out = capsys.readouterr().out
    line = path.read_text().splitlines().index('remove = ["NoSuchKeyword"]') + 1
    assert f"error: line {line}: profiles.teaching.edits.remove[0]: 'NoSuchKeyword'" in out


# --- edits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "target"), [
    ("StudyDate", Target(0x00080020)),
    ("(0008,0020)", Target(0x00080020)),
    ("(0019,xx10) GEMS_ACQU_01", Target(0x00190010, "GEMS_ACQU_01")),
])
def test_targets_by_keyword_tag_and_private_creator(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["SOPInstanceUID", "(0002,0010)", "(0008,xx10) X", "(0019,xx05) X",
                                  "PixelData"])
def test_identity_meta_and_non_private_creator_slots_are_not_targets(text):
    with pytest.raises(EditError):
        parse_target(text)


def test_edits_remove_then_keep_then_set_with_templates():
    original = pydicom.Dataset()
    original.BodyPartExamined = "HEAD"
    block = original.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x10, "LO", "kept private")
    output = pydicom.Dataset()
    output.StudyDate = "20200101"
    output.BodyPartExamined = ""
    edits = Edits(
        remove=(parse_target("StudyDate"),),
        keep=(parse_target("BodyPartExamined"), parse_target("(0019,xx10) GEMS_ACQU_01")),
        set=((parse_target("PatientName"), "{label.diagnosis}"),
             (parse_target("ClinicalTrialSubjectID"), "{pseudonym.patient_id}-{profile}")),
    )

    written = apply_edits(output, original, edits, {"label.diagnosis": "Glioma",
                                                    "pseudonym.patient_id": "ANON1",
                                                    "profile": "trial"})

    assert "StudyDate" not in output
    assert output.BodyPartExamined == "HEAD"
    assert output.private_block(0x0019, "GEMS_ACQU_01")[0x10].value == "kept private"
    assert output.PatientName == "Glioma"
    assert output.ClinicalTrialSubjectID == "ANON1-trial"
    assert ("PatientName", "Glioma") in written


def test_study_number_is_eight_keyed_digits():
    number = study_number(SECRET, "2.25.1")
    assert len(number) == 8 and number.isdigit()
    assert number == study_number(SECRET, "2.25.1")
    assert number != study_number(SECRET, "2.25.2")
    assert number != study_number(b"another-secret-0123456789", "2.25.1")


# --- a profile applied to an instance ----------------------------------------------------------


def _instance(accession: str = ACCESSION) -> bytes:
    ds = base_dataset()
    ds.AccessionNumber = accession
    ds.BodyPartExamined = "BRAIN"
    return write(ds)


def _apply(tmp_path: Path, data: bytes, **kwargs: str) -> dict[str, pydicom.Dataset]:
    settings = load_settings(two_profiles(tmp_path, **kwargs))
    original = Original(lambda: data)
    copies = {}
    for profile in profiles_in_use(settings):
        clean = deidentify_bytes(data, profile.policy, SECRET)
        clean = edited(clean, original, profile, settings.labels, SECRET)
        copies[profile.name] = pydicom.dcmread(BytesIO(clean.data))
    return copies


def test_each_profile_gets_its_options_and_edits_with_shared_pseudonyms(tmp_path):
    copies = _apply(tmp_path, _instance(), edits="""remove = ["StudyDate"]
keep = ["BodyPartExamined"]
[profiles.teaching.edits.set]
PatientName = "{label.diagnosis}"
AccessionNumber = "{label.case}"
StudyID = "{pseudonym.study}"
ClinicalTrialSiteID = "SITE-3"
""")
    research, teaching = copies["default"], copies["teaching"]

    assert teaching.PatientName == "Glioblastoma"
    assert teaching.AccessionNumber == "TF-0042"
    assert teaching.ClinicalTrialSiteID == "SITE-3"
    assert "StudyDate" not in teaching
    assert teaching.BodyPartExamined == "BRAIN"
    assert len(teaching.StudyID) == 8 and teaching.StudyID.isdigit()
    assert "PatientSex" in teaching and teaching.PatientSex  # retain_patient_characteristics
    assert research.PatientName != "Glioblastoma"
    assert research.get("ClinicalTrialSiteID") is None
    assert research.StudyDate != base_dataset().StudyDate  # shifted, not removed
    for tag in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert research[tag].value == teaching[tag].value


def test_a_study_without_a_label_row_is_refused_for_that_profile(tmp_path):
    with pytest.raises(MissingLabel) as info:
        _apply(tmp_path, _instance(accession="NOT-IN-CSV"))
    assert "NOT-IN-CSV" not in str(info.value)


def test_missing_empty_gives_empty_labels(tmp_path):
    path = two_profiles(tmp_path)
    path.write_text(path.read_text().replace('missing = "quarantine"', 'missing = "empty"'))
    settings = load_settings(path)
    data = _instance(accession="NOT-IN-CSV")
    teaching = profiles_in_use(settings)[1]
    clean = edited(deidentify_bytes(data, teaching.policy, SECRET), Original(lambda: data),
                   teaching, settings.labels, SECRET)
    assert pydicom.dcmread(BytesIO(clean.data)).PatientName == ""


def test_a_label_holding_the_patients_name_is_caught_by_the_leak_guard(tmp_path):
    labels_rows = f"{ACCESSION},{PATIENT_NAME.split('^')[0]} case,TF-1\n"
    data = _instance()
    path = two_profiles(tmp_path)
    labels_csv(tmp_path, labels_rows)
    settings = load_settings(path)
    teaching = profiles_in_use(settings)[1]
    with pytest.raises(LeakDetected) as info:
        edited(deidentify_bytes(data, teaching.policy, SECRET), Original(lambda: data), teaching,
               settings.labels, SECRET)
    message = str(info.value)
    assert "PatientName" in message and "teaching" in message
    assert PATIENT_NAME.split("^")[0] not in message


@pytest.mark.parametrize("keep", ["PatientID", "PatientBirthDate"])
def test_keeping_an_identifier_is_caught_by_the_leak_guard(tmp_path, keep):
    data = _instance()
    settings = load_settings(two_profiles(tmp_path, edits=f'keep = ["{keep}"]'))
    teaching = profiles_in_use(settings)[1]
    with pytest.raises(LeakDetected):
        edited(deidentify_bytes(data, teaching.policy, SECRET), Original(lambda: data), teaching,
               settings.labels, SECRET)
    assert PATIENT_ID and BIRTH_DATE  # the values the guard knows from the original


# --- the command line -----------------------------------------------------------------------


def test_anonymize_with_a_named_profile_applies_its_edits(tmp_path, capsys):
    config = two_profiles(tmp_path)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.dcm").write_bytes(_instance())

    assert main(["anonymize", "--config", str(config), "--profile", "teaching", "--workers", "1",
                 str(src), str(dst)]) == 0

    (written,) = dst.rglob("*.dcm")
    ds = pydicom.dcmread(written)
    assert ds.PatientName == "Glioblastoma"
    assert ds.ClinicalTrialSiteID == "SITE-3"


def test_anonymize_says_which_original_values_a_profile_keeps(tmp_path, capsys):
    config = two_profiles(tmp_path, edits='keep = ["BodyPartExamined", "StudyDescription"]\n'
                                         'set = { PatientName = "{label.diagnosis}" }')
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.dcm").write_bytes(_instance())
    assert main(["anonymize", "--config", str(config), "--profile", "teaching", "--workers", "1",
                 str(src), str(dst)]) == 0
    assert ("profile teaching keeps the original values of BodyPartExamined, StudyDescription"
            in capsys.readouterr().err)


def test_anonymize_quarantines_a_file_without_a_label_row(tmp_path, capsys):
    config = two_profiles(tmp_path)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.dcm").write_bytes(_instance(accession="NOT-IN-CSV"))

    main(["anonymize", "--config", str(config), "--profile", "teaching", "--workers", "1",
          "--json", str(src), str(dst)])

    assert not list(dst.rglob("*.dcm"))
    (record,) = (tmp_path / "var" / "quarantine").rglob("record.json")
    assert '"missing-label"' in record.read_text()


def test_anonymize_with_an_unknown_profile_names_the_option(tmp_path, capsys):
    config = two_profiles(tmp_path)
    assert main(["anonymize", "--config", str(config), "--profile", "teachng",
                 str(tmp_path), str(tmp_path / "out")]) != 0
    assert "--profile: no profile 'teachng'" in capsys.readouterr().err


def test_profile_show_resolves_options_and_edits(tmp_path, capsys):
    config = two_profiles(tmp_path, edits="""remove = ["StudyDate", "(0019,xx10) GEMS_ACQU_01"]
keep = ["BodyPartExamined"]
set = { PatientName = "{label.diagnosis}" }""")

    assert main(["profile", "show", "--config", str(config), "teaching"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert "options: retain_patient_characteristics" in out
    assert "destinations: teaching" in out

    def action(prefix: str) -> str:
        (line,) = [line for line in out if line.startswith(prefix)]
        return line[len(prefix):].strip()

    assert action("(0008,0020) StudyDate") == "remove (edit)"
    assert action("(0018,0015) BodyPartExamined") == "keep original (edit)"
    assert action("(0010,0010) PatientName") == "set '{label.diagnosis}' (edit)"
    assert action("(0019,xx10) GEMS_ACQU_01") == "remove (edit)"
    assert action("(0010,0040) PatientSex") == "keep"  # retain_patient_characteristics
    assert action("(0010,0020) PatientID") != "keep"


def test_private_keep_and_set_find_or_make_the_creators_block(tmp_path):
    ds = base_dataset()
    ds.AccessionNumber = ACCESSION
    for group in (0x0019, 0x0029):  # CT_small's own blocks aside, one more in a free group
        for slot in range(0x10, 0x100):
            if (group << 16) | slot not in ds:
                break
        ds.add_new((group << 16) | slot, "LO", "EXAMPLE_CREATOR")
        ds.add_new((group << 16) | (slot << 8) | 0x10, "LO", f"kept {group:04X}")
    copies = _apply(tmp_path, write(ds), edits="""
keep = ["(0019,xx10) EXAMPLE_CREATOR", "(0029,xx10) EXAMPLE_CREATOR"]
set = { "(0029,xx11) EXAMPLE_CREATOR" = "{profile}", "(0031,xx10) OTHER" = "{pseudonym.study}" }""")
    teaching = copies["teaching"]

    assert teaching.private_block(0x0019, "EXAMPLE_CREATOR")[0x10].value == "kept 0019"
    block = teaching.private_block(0x0029, "EXAMPLE_CREATOR")
    assert block[0x10].value == "kept 0029"
    assert block[0x11].value == "teaching"
    assert len(teaching.private_block(0x0031, "OTHER")[0x10].value) == 8
    research = copies["default"]
    with pytest.raises(KeyError):
        research.private_block(0x0029, "EXAMPLE_CREATOR")


def test_a_trial_profile_takes_subject_ids_from_its_patient_table(tmp_path):
    subjects = tmp_path / "subjects.csv"
    subjects.write_text(f"PatientID,subject ID\n{PATIENT_ID},SUBJ-007\n")
    data = _instance()
    config = two_profiles(tmp_path, edits="""
[profiles.teaching.edits.set]
ClinicalTrialSubjectID = "{pseudonym.patient_id}"
ClinicalTrialProtocolID = "EXP-2026-01"
""", extra=f'[profiles.teaching.patient]\nmode = "table"\ntable_file = "{subjects}"\n')
    settings = load_settings(config)
    default, trial = profiles_in_use(settings)
    assert settings.profile("default").deidentify.patient.mode == "hash"  # not inherited back

    copy = pydicom.dcmread(BytesIO(edited(deidentify_bytes(data, trial.policy, SECRET),
                                          Original(lambda: data), trial, settings.labels,
                                          SECRET).data))
    research = deidentify_bytes(data, default.policy, SECRET).result.dataset

    assert copy.PatientID == copy.ClinicalTrialSubjectID == "SUBJ-007"
    assert copy.ClinicalTrialProtocolID == "EXP-2026-01"
    assert research.PatientID != "SUBJ-007"
    assert copy.StudyInstanceUID == research.StudyInstanceUID


def test_edits_after_the_pixel_stage_changed_the_encoding_go_through_pydicom(tmp_path):
    """Pixel cleaning writes explicit VR little endian: an implicit VR original's kept values
    are converted, not copied as bytes."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from gateway.deidentify import CleanInstance

    ds = base_dataset()
    ds.AccessionNumber = ACCESSION
    ds.BodyPartExamined = "BRAIN"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = write(ds)
    settings = load_settings(two_profiles(tmp_path, edits="""keep = ["BodyPartExamined"]
set = { PatientName = "{label.diagnosis}" }"""))
    teaching = profiles_in_use(settings)[1]
    clean = deidentify_bytes(data, teaching.policy, SECRET)
    explicit = pydicom.dcmread(BytesIO(clean.data))
    explicit.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    as_cleaned = CleanInstance(clean.result, write(explicit), ExplicitVRLittleEndian)

    copy = pydicom.dcmread(BytesIO(edited(as_cleaned, Original(lambda: data), teaching,
                                          settings.labels, SECRET).data))

    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert copy.BodyPartExamined == "BRAIN"
    assert copy.PatientName == "Glioblastoma"


def test_values_the_gateway_writes_itself_are_no_leak_in_an_already_anonymous_input(tmp_path):
    ds = base_dataset()
    ds.AccessionNumber = ACCESSION
    ds.PatientName = "ANONYMOUS"
    data = write(ds)
    settings = load_settings(two_profiles(tmp_path, edits='set = { StudyDescription = "ANONYMOUS case" }'))
    teaching = profiles_in_use(settings)[1]
    copy = pydicom.dcmread(BytesIO(edited(deidentify_bytes(data, teaching.policy, SECRET),
                                          Original(lambda: data), teaching, settings.labels,
                                          SECRET).data))
    assert copy.StudyDescription == "ANONYMOUS case"


def test_an_offline_config_without_destinations_may_hold_profiles(tmp_path, capsys):
    config = write_config(tmp_path, f"""
[profiles.teaching.edits]
set = {{ PatientName = "{{label.diagnosis}}" }}
[labels]
file = "{labels_csv(tmp_path)}"
key = "AccessionNumber"
""")
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.dcm").write_bytes(_instance())

    assert main(["anonymize", "--config", str(config), "--profile", "teaching", "--workers", "1",
                 str(src), str(dst)]) == 0
    (written,) = dst.rglob("*.dcm")
    assert pydicom.dcmread(written).PatientName == "Glioblastoma"
