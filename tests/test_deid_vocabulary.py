"""The clean action for free text: descriptors keep their meaning, people and numbers go."""

from __future__ import annotations

from importlib import resources

import pytest

from gateway.deid.vocabulary import clean_text, is_vocabulary_word, load_user_words
from gateway.errors import ConfigError


def shipped_lines() -> list[str]:
    return resources.files("gateway.deid").joinpath("data/clean_words.txt").read_text("utf-8").splitlines()


def shipped_words() -> set[str]:
    return {line for line in shipped_lines() if not line.startswith("#")}


@pytest.mark.parametrize(
    "descriptor",
    [
        "CT CHEST W/O CONTRAST",
        "CT HEAD W/O CONTRAST",
        "MR BRAIN T1 AX POST",
        "US ABDOMEN COMPLETE",
        "PET/CT WHOLE BODY FDG",
        "Thorax^01_Routine (Adult)",
        "HEAD 5.0 H30s",
        "T1 AX POST-GAD",
        "AX T1 POST-GAD 3.0 MM",
        "SAG T2 FLAIR FS",
        "DWI B1000 ADC",
        "SWI MPRAGE SAG T1 3D",
        "X-RAY CHEST PA/LAT",
        "MR L-SPINE WO",
        "L4-L5 C5-6",
        "CT ABD/PELVIS W CONTRAST",
        "T2FLAIR 3DT1 T1FS AX2",
        "Br40 Qr40 FC13 I26f",
        "SERIES 2",
        "3rd ventricle",
        "patient's knee",
        "  CT HEAD  ",
    ],
)
def test_a_descriptor_of_standard_words_is_left_as_it_is(descriptor):
    assert clean_text(descriptor) == descriptor


@pytest.mark.parametrize(
    "measurements",
    ["5MM", "2.5 MM", "120KV", "120 KV", "3D", "4D", "T1", "T2", "3T", "1.5T", "10%", "0.625 MM"],
)
def test_measurements_stay(measurements):
    assert clean_text(measurements) == measurements


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("CT CHEST per Dr. Hartley 555-0199", "CT CHEST per Dr"),
        ("MRI knee - John Smithson 1950-03-04", "MRI knee"),
        ("Study at 12 Elm Street, Springfield", "Study at"),
        ("Chinese name 王小明 in text", "name in text"),
        ("tech: JSMITH", ""),
        ("acc 88213377", ""),
        ("reviewed by Kowalczyk 04/03/2024", "reviewed by"),
        ("call x4471", ""),
        ("jsmith@example.org", ""),
        ("CT HEAD <jsmith@example.org> ROUTINE", "CT HEAD ROUTINE"),
        ("see https://pacs.example.org/study/1234 CT HEAD", "CT HEAD"),
        ("Patient: Müller, Hans", "Patient"),
        ("ИВАНОВ ИВАН CT", "CT"),
        ("O'Brien CT", "CT"),
        ("Smith's CT", "CT"),
        ("MAY GRACE MR KNEE", "MR KNEE"),
    ],
)
def test_names_ids_dates_phones_addresses_and_e_mails_are_removed(text, cleaned):
    assert clean_text(text) == cleaned


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("(555) 123-4567 CT", "CT"),
        ("+1 555 123 4567", ""),
        ("01 23 45 67 89", ""),
        ("CT HEAD 12:30", "CT HEAD"),
        ("CT HEAD 08h00", "CT HEAD"),
        ("CT HEAD 20240304", "CT HEAD"),
        ("CT HEAD 04.03.2024", "CT HEAD"),
        ("CT HEAD 04.03", "CT HEAD"),  # a day and a month as likely as a number
        ("4th March CT", "CT"),
        ("March 4 CT", "CT"),
        ("CT12345678", ""),
        ("10.0.0.1", ""),
        ("Rm 12", ""),
        ("Smith 12 CT", "CT"),
        ("CT HEAD 45Y", "CT HEAD"),
    ],
)
def test_numbers_that_could_identify_are_removed(text, cleaned):
    assert clean_text(text) == cleaned


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("CT (Smith) HEAD", "CT HEAD"),
        ("(Smith) CT HEAD", "CT HEAD"),
        ("CT HEAD (Smith", "CT HEAD"),
        ("CT HEAD (JS, adult)", "CT HEAD (adult)"),
        ("CT^Smith^AX", "CT^AX"),
        ("CHEST - John Smith, ROUTINE", "CHEST - ROUTINE"),
        ("Smith", ""),
        ("", ""),
    ],
)
def test_the_gaps_left_by_removed_words_are_collapsed(text, cleaned):
    assert clean_text(text) == cleaned


def test_cleaned_text_keeps_the_original_case():
    assert clean_text("Ct Chest Smith Routine") == "Ct Chest Routine"


def test_the_users_words_are_kept_too():
    assert clean_text("NEURO FASTBRAIN Smith") == "NEURO"
    assert clean_text("NEURO FASTBRAIN Smith", frozenset({"FASTBRAIN"})) == "NEURO FASTBRAIN"
    assert clean_text("neuro fastbrain smith", frozenset({"FASTBRAIN"})) == "neuro fastbrain"


def test_cleaned_text_is_never_longer_than_the_original():
    samples = [
        "CT ( Smith ) HEAD", "A (B [C {D <E", ") ] } >", "CT - - - Smith - - - HEAD", "x" * 300 + "@y CT",
        "CT\tHEAD\nSmith  \u3000 ROUTINE", "5.0 5.0.0 1,5 T 12 34 MM", "é\u0301 CT", "",
    ]
    for text in samples:
        assert len(clean_text(text)) <= len(text)


def test_is_vocabulary_word_ignores_case_and_knows_no_names():
    assert is_vocabulary_word("Chest")
    assert is_vocabulary_word("ROUTINE")
    assert is_vocabulary_word("sagittal")
    assert not is_vocabulary_word("Smith")
    assert not is_vocabulary_word("Hartley")
    assert not is_vocabulary_word("")


# Common given and family names of several languages, names that are also English words, and
# month and weekday names: none may ever be a vocabulary word.
_NAME_LINES = """
JOHN MARY JAMES ROBERT MICHAEL WILLIAM DAVID RICHARD JOSEPH THOMAS CHARLES MARIA ANNA ELIZABETH
SMITH JOHNSON WILLIAMS BROWN JONES MILLER DAVIS WILSON TAYLOR MOORE ANDERSON CLARK LEWIS WALKER
HALL YOUNG KING WRIGHT HILL GREEN BAKER CARTER MITCHELL TURNER PARKER COOK MORGAN BELL WOOD
MULLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER SCHULZ HOFFMANN KOCH KLEIN WOLF
DUBOIS DURAND MARTIN BERNARD LEROY MOREAU ROSSI RUSSO FERRARI BIANCHI ROMANO GARCIA MARTINEZ
LOPEZ GONZALEZ RODRIGUEZ PEREZ SILVA SANTOS OLIVEIRA NOWAK KOWALSKI KOWALCZYK IVANOV PETROV
JANSEN DEVRIES NIELSEN HANSEN JOHANSSON WANG LI ZHANG LIU CHEN YANG HUANG NGUYEN TRAN KIM LEE
PARK SATO SUZUKI TANAKA PATEL SINGH KUMAR KHAN MOHAMMED AHMED ALI COHEN LEVI HARTLEY SMITHSON
MAY MARK BILL GRACE JUNE APRIL AUGUST FRANK WILL HOPE ROSE DAWN HOLLY MAX PENNY ROBIN
JANUARY FEBRUARY MARCH JULY SEPTEMBER OCTOBER NOVEMBER DECEMBER
MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY
"""
NAMES = set(_NAME_LINES.split())


def test_the_shipped_vocabulary_holds_no_common_name():
    assert sorted(NAMES & shipped_words()) == []


def test_the_shipped_vocabulary_is_upper_case_words_without_digits():
    words = shipped_words()
    assert 1000 < len(words) < 20000
    assert all(word.isascii() and word.isalpha() and word.isupper() for word in words)
    assert {word for word in words if len(word) == 1} <= set("CLORWX")


def test_the_shipped_vocabulary_names_its_sources():
    header = " ".join(line for line in shipped_lines() if line.startswith("#"))
    assert "pydicom" in header
    assert "scripts/build_vocabulary.py" in header


def test_user_words_are_read_one_per_line_with_comments(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# site protocol names\nFastBrain\n\n  strokepack  # the stroke one\nT2STAR\n", "utf-8")
    assert load_user_words(path) == frozenset({"FASTBRAIN", "STROKEPACK", "T2STAR"})


@pytest.mark.parametrize("bad", ["two words", "W/O", "12345", "x" * 65])
def test_a_bad_user_word_names_the_file_and_line(tmp_path, bad):
    path = tmp_path / "words.txt"
    path.write_text(f"# header\nGOOD\n{bad}\n", "utf-8")
    with pytest.raises(ConfigError, match=r"words\.txt, line 3: ") as info:
        load_user_words(path)
    assert bad not in str(info.value)


def test_an_unreadable_user_word_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="missing.txt"):
        load_user_words(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"GOOD\nM\xfcller\n")
    with pytest.raises(ConfigError, match=r"latin\.txt, line 2: not UTF-8"):
        load_user_words(latin)
