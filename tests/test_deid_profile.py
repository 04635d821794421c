"""The resolved Table E.1-1: the shipped data, option resolution, and the pattern rows."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest
from deid_helpers import (
    SAFE_PRIVATE_PATH,
    SHARED,
    TABLE_PATH,
    exact_rows,
    option_keys,
    pattern_rows,
    row_id,
    row_tag,
    table,
)

from gateway.deid.private import standard_safe_private
from gateway.deid.profile import CONTRADICTORY_OPTIONS, build_profile, option_catalogue
from gateway.errors import ConfigError

ACTIONS = {"X", "Z", "D", "U", "K", "C", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}


@pytest.mark.parametrize(
    ("shipped", "source"),
    [(TABLE_PATH, "ps315_annex_e.json"), (SAFE_PRIVATE_PATH, "ps315_safe_private.json")],
    ids=["annex_e", "safe_private"],
)
def test_shipped_tables_are_identical_to_the_shared_source(shipped, source):
    """Against the recorded checksums (tests/data/ps315_sources.json: runs in a fresh clone),
    and against ../shared itself when it is beside the project."""
    recorded = json.loads((Path(__file__).parent / "data" / "ps315_sources.json").read_text())
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == recorded["files"][source]
    original = SHARED / source
    if original.exists():
        assert shipped.read_bytes() == original.read_bytes()


def test_table_is_complete_and_well_formed():
    data = table()
    rows = data["attributes"]
    assert data["count"] == len(rows)
    assert len(exact_rows()) == len(rows) - 4
    assert {r["pattern"] for r in pattern_rows()} == {"50xxxxxx", "60xx3000", "60xx4000", "private"}
    patterns = [r["pattern"].lower() for r in rows]
    assert len(patterns) == len(set(patterns)), "a tag is listed twice"
    keys = option_keys()
    for row in rows:
        assert row["basic"] in ACTIONS - {"K", "C"}, row_id(row)
        assert set(row["options"]) == set(keys), row_id(row)
        assert set(row["options"].values()) <= {None, "K", "C"}, row_id(row)


def test_profile_carries_the_table_edition():
    assert build_profile().edition == table()["edition"]
    assert re.fullmatch(r"20\d\d[a-e]", table()["edition"])


@pytest.mark.parametrize("row", exact_rows(), ids=row_id)
def test_basic_profile_action_of_every_exact_row(row):
    profile = build_profile()
    assert profile.action_for(row_tag(row)) == row["basic"]


def _expected(row, keys):
    said = {row["options"][k] for k in keys} - {None}
    if "K" in said:
        return "K"
    if "C" in said:
        return "C"
    return row["basic"]


@pytest.mark.parametrize("key", option_keys())
def test_each_option_changes_exactly_the_rows_its_column_names(key):
    profile = build_profile([key])
    changed = {row_id(r) for r in exact_rows() if profile.action_for(row_tag(r)) != r["basic"]}
    named = {row_id(r) for r in exact_rows() if r["options"][key] is not None}
    assert changed == named
    for row in exact_rows():
        assert profile.action_for(row_tag(row)) == _expected(row, [key]), row_id(row)


_PAIRS = [
    pair
    for pair in itertools.combinations(option_keys(), 2)
    if not set(pair) >= CONTRADICTORY_OPTIONS
]


@pytest.mark.parametrize("pair", _PAIRS, ids="+".join)
def test_where_two_options_speak_keep_wins_over_clean(pair):
    profile = build_profile(pair)
    for row in exact_rows():
        assert profile.action_for(row_tag(row)) == _expected(row, pair), row_id(row)


def test_all_compatible_options_together():
    keys = [k for k in option_keys() if k != "retain_long_full_dates"]
    profile = build_profile(keys)
    assert [o.key for o in profile.options] == keys
    for row in exact_rows():
        assert profile.action_for(row_tag(row)) == _expected(row, keys), row_id(row)


def test_repeated_option_is_listed_once():
    profile = build_profile(["retain_uids", "retain_uids"])
    assert [o.key for o in profile.options] == ["retain_uids"]


def test_unknown_option_is_a_config_error_naming_it_and_the_choices():
    with pytest.raises(ConfigError) as info:
        build_profile(["retain_uids", "retain_everything"])
    message = str(info.value)
    assert "deidentify.options[1]" in message
    assert "'retain_everything'" in message
    assert "retain_safe_private" in message


def test_both_longitudinal_date_options_contradict():
    with pytest.raises(ConfigError) as info:
        build_profile(["retain_long_full_dates", "clean_descriptors", "retain_long_modified_dates"])
    assert "retain_long_full_dates" in str(info.value)
    assert "retain_long_modified_dates" in str(info.value)


def test_option_catalogue_matches_the_cid_7050_codes():
    catalogue = option_catalogue()
    assert set(catalogue) == set(option_keys())
    expected = {
        "clean_graphics": "113103",
        "clean_structured_content": "113104",
        "clean_descriptors": "113105",
        "retain_long_full_dates": "113106",
        "retain_long_modified_dates": "113107",
        "retain_patient_characteristics": "113108",
        "retain_device_identity": "113109",
        "retain_uids": "113110",
        "retain_safe_private": "113111",
        "retain_institution_identity": "113112",
    }
    assert {k: o.code for k, o in catalogue.items()} == expected
    assert {o.scheme for o in catalogue.values()} == {"DCM"}


# --- pattern rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [0x5000, 0x5002, 0x501E, 0x50FE])
@pytest.mark.parametrize("element", [0x0005, 0x0010, 0x2500, 0x3000])
def test_every_element_of_a_curve_group_is_removed(group, element):
    profile = build_profile()
    assert profile.action_for((group << 16) | element) == "X"
    assert build_profile(["clean_graphics"]).action_for((group << 16) | element) == "C"


@pytest.mark.parametrize("group", [0x6000, 0x6002, 0x601E])
def test_overlay_data_and_comments_are_removed_other_overlay_elements_are_not_listed(group):
    profile = build_profile()
    assert profile.action_for((group << 16) | 0x3000) == "X"
    assert profile.action_for((group << 16) | 0x4000) == "X"
    assert profile.action_for((group << 16) | 0x0010) is None  # Overlay Rows
    cleaned = build_profile(["clean_graphics"])
    assert cleaned.action_for((group << 16) | 0x3000) == "C"
    assert cleaned.action_for((group << 16) | 0x4000) == "C"


@pytest.mark.parametrize("tag", [0x50010010, 0x60013000, 0x51000010, 0x61003000])
def test_odd_or_out_of_range_groups_are_not_curves_or_overlays(tag):
    assert build_profile().action_for(tag) is None


def test_private_attributes_are_removed_unless_retain_safe_private():
    assert build_profile().private_action == "X"
    assert build_profile(["retain_safe_private"]).private_action == "C"


def test_unlisted_public_tag_has_no_action():
    assert build_profile().action_for(0x00080060) is None  # Modality


# --- safe private table ------------------------------------------------------------------------


def test_standard_safe_private_list_has_every_row():
    from deid_helpers import safe_private_table

    rows = safe_private_table()["attributes"]
    assert safe_private_table()["count"] == len(rows)
    keys = standard_safe_private().keys
    expected = set()
    for row in rows:
        match = re.fullmatch(r"\(([0-9A-F]{4}),xx([0-9A-F]{2})\)", row["element"], re.I)
        assert match, row["element"]
        expected.add((row["private_creator"].strip().upper(), int(match[1], 16), int(match[2], 16)))
        assert int(match[1], 16) % 2 == 1, row["element"]
    assert keys == expected
