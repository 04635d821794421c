"""Pixel rules: the rules file (every problem reported with its line), which rule an instance
gets, the quarantine hint for an instance no rule matches, the CTP importer, the shipped default
rules, and the preview PNG."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from gateway.errors import ConfigError, PixelCleaningFailed
from gateway.pixels.ctp import import_ctp
from gateway.pixels.preview import write_preview
from gateway.pixels.rules import Region, Rule, RuleSet, load_rules, missing_rule_hint, parse_rules

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "config" / "pixel-rules.toml"

VALID = """\
# two devices
[[rules]]
name = "ACME US top banner"
match = { Modality = "US", Manufacturer = "ACME*", Rows = 480, Columns = 640 }
regions = [[0, 0, 640, 40], [600, 440, 40, 40]]

[[rules]]
name = "Any ACME"
match = { Manufacturer = "ACME*" }
regions = [
    [0, 0, 100, 20],
]
"""


def instance(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def acme_us(**overrides: object) -> Dataset:
    attributes: dict[str, object] = {"Modality": "US", "Manufacturer": "ACME Imaging",
                                     "ManufacturerModelName": "X1", "Rows": 480, "Columns": 640}
    attributes.update(overrides)
    return instance(**attributes)


def read_testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return pydicom.dcmread(path)


def chosen(ruleset: RuleSet, ds: Dataset) -> Rule:
    rule = ruleset.match(ds)
    assert rule is not None, "no rule matched"
    return rule


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_rules(text, "rules.toml")
    return str(caught.value).splitlines()


def rules(text: str) -> RuleSet:
    return parse_rules(text, "rules.toml")


def one_rule(match: str) -> RuleSet:
    return rules(f'[[rules]]\nname = "r"\nmatch = {match}\nregions = [[0, 0, 1, 1]]\n')


# --- parsing -----------------------------------------------------------------------------------


def test_a_valid_file_gives_its_rules_in_order_with_their_lines() -> None:
    ruleset = rules(VALID)

    assert ruleset.source == "rules.toml"
    assert [r.name for r in ruleset.rules] == ["ACME US top banner", "Any ACME"]
    first, second = ruleset.rules
    assert dict(first.match) == {"Modality": "US", "Manufacturer": "ACME*", "Rows": 480, "Columns": 640}
    assert first.regions == (Region(0, 0, 640, 40), Region(600, 440, 40, 40))
    assert (first.line, second.line) == (2, 7)
    assert second.regions == (Region(0, 0, 100, 20),)


def test_load_rules_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "pixel-rules.toml"
    path.write_text(VALID, encoding="utf-8")

    assert load_rules(path).source == str(path)
    assert len(load_rules(path).rules) == 2


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="absent.toml: cannot read the pixel rules"):
        load_rules(path)


def test_a_file_without_rules_is_an_empty_rule_set() -> None:
    assert rules("# nothing yet\n").rules == ()


def test_toml_syntax_error_names_its_line() -> None:
    text = '[[rules]]\nname = "a"\nmatch = { Modality = US }\nregions = [[0, 0, 1, 1]]\n'

    [problem] = problems_of(text)
    assert problem.startswith("rules.toml, line 3: TOML syntax: ")


@pytest.mark.parametrize(
    ("rule_body", "line", "message"),
    [
        ('name = "a"\ncolour = "red"\nmatch = { Modality = "US" }\nregions = [[0, 0, 1, 1]]',
         3, "unknown key 'colour' in a rule (expected name, match, regions)"),
        ('name = "a"\nmatch = { Modalty = "US" }\nregions = [[0, 0, 1, 1]]',
         3, "unknown DICOM keyword 'Modalty' in match"),
        ('name = "a"\nmatch = { PixelData = "x" }\nregions = [[0, 0, 1, 1]]',
         3, "PixelData (VR OB or OW) holds no text or number a rule can compare"),
        ('name = "a"\nmatch = { Modality = true }\nregions = [[0, 0, 1, 1]]',
         3, "Modality: the value must be a string (glob) or a number"),
        ('name = "a"\nmatch = {}\nregions = [[0, 0, 1, 1]]',
         3, "match is empty: a rule must name at least one keyword"),
        ('name = "a"\nregions = [[0, 0, 1, 1]]',
         1, "the rule has no match (keywords and the values they must have)"),
        ('name = "a"\nmatch = { Modality = "US" }',
         1, "the rule has no regions (x, y, width, height to blank)"),
        ('name = "a"\nmatch = { Modality = "US" }\nregions = []',
         4, "regions must be a non-empty list of [x, y, width, height]"),
        ('name = "a"\nmatch = { Modality = "US" }\nregions = [\n  [0, 0, 1, 1],\n  [0, 0, 1],\n]',
         6, "region 2 must be 4 non-negative integers [x, y, width, height]"),
        ('name = "a"\nmatch = { Modality = "US" }\nregions = [[0, -1, 1, 1]]',
         4, "region 1 must be 4 non-negative integers [x, y, width, height]"),
        ('name = "a"\nmatch = { Modality = "US" }\nregions = [[0, 0, 1.5, 1]]',
         4, "region 1 must be 4 non-negative integers [x, y, width, height]"),
        ('name = "a"\nmatch = { Modality = "US" }\nregions = [[0, 0, 0, 1]]',
         4, "region 1 has no area (width and height must be 1 or more)"),
        ('name = "a"\nmatch = { Rows = 480, Columns = 640 }\nregions = [[600, 0, 41, 480]]',
         4, "region 1 reaches beyond the image the rule matches (x + width = 641 > Columns = 640)"),
        ('name = "a"\nmatch = { Rows = 480 }\nregions = [[0, 470, 10, 11]]',
         4, "region 1 reaches beyond the image the rule matches (y + height = 481 > Rows = 480)"),
        ('match = { Modality = "US" }\nregions = [[0, 0, 1, 1]]',
         1, "the rule has no name"),
        ('name = ""\nmatch = { Modality = "US" }\nregions = [[0, 0, 1, 1]]',
         2, "name must be a non-empty string"),
    ],
)
def test_each_problem_is_reported_with_its_line(rule_body: str, line: int, message: str) -> None:
    assert problems_of(f"[[rules]]\n{rule_body}\n") == [f"rules.toml, line {line}: {message}"]


def test_a_duplicate_name_names_both_lines() -> None:
    text = VALID + '\n[[rules]]\nname = "Any ACME"\nmatch = { Modality = "CT" }\nregions = [[0, 0, 1, 1]]\n'

    assert problems_of(text) == ["rules.toml, line 15: duplicate rule name 'Any ACME' (also at line 7)"]


def test_a_mistyped_table_is_reported_rather_than_giving_no_rules() -> None:
    text = '[[rule]]\nname = "a"\nmatch = { Modality = "US" }\nregions = [[0, 0, 1, 1]]\n'

    assert problems_of(text) == ["rules.toml, line 1: unknown key 'rule' (expected [[rules]] blocks)"]


def test_every_problem_of_every_rule_is_reported_at_once_in_line_order() -> None:
    text = (
        '[[rules]]\n'                                                   # 1
        'name = "first"\n'                                              # 2
        'match = { Modalty = "US", Rows = 480, Columns = 640 }\n'       # 3
        'regions = [\n'                                                 # 4
        '  [0, 0, 640, 40],   # the banner\n'                           # 5
        '  [600, 440, 80, 40],\n'                                       # 6
        ']\n'                                                           # 7
        '\n'                                                            # 8
        '[[rules]]\n'                                                   # 9
        'name = "first"\n'                                              # 10
        'size = 3\n'                                                    # 11
        '\n'                                                            # 12
        '[rules.match]\n'                                               # 13
        'Modality = "US"\n'                                             # 14
        'Manufactrer = "ACME"\n'                                        # 15
    )

    assert problems_of(text) == [
        "rules.toml, line 3: unknown DICOM keyword 'Modalty' in match",
        "rules.toml, line 6: region 2 reaches beyond the image the rule matches"
        " (x + width = 680 > Columns = 640)",
        "rules.toml, line 9: the rule has no regions (x, y, width, height to blank)",
        "rules.toml, line 10: duplicate rule name 'first' (also at line 1)",
        "rules.toml, line 11: unknown key 'size' in a rule (expected name, match, regions)",
        "rules.toml, line 15: unknown DICOM keyword 'Manufactrer' in match",
    ]


# --- matching ----------------------------------------------------------------------------------


def test_the_first_rule_whose_every_key_holds_is_chosen() -> None:
    ruleset = rules(VALID)

    assert chosen(ruleset, acme_us()).name == "ACME US top banner"
    assert chosen(ruleset, acme_us(Rows=600)).name == "Any ACME"
    assert ruleset.match(acme_us(Manufacturer="Other Corp")) is None


@pytest.mark.parametrize(
    ("pattern", "value", "holds"),
    [
        ("ACME*", "ACME Imaging", True),
        ("ACME*", "acme imaging", False),       # case-sensitive
        ("*Imaging", "ACME Imaging", True),
        ("ACME Imagin?", "ACME Imaging", True),
        ("ACME Imagin?", "ACME Imagin", False),
        ("[Aa]cme*", "acme imaging", True),
        ("ACME", "ACME Imaging", False),        # no glob: the whole value
        ("ACME", "  ACME  ", True),             # the value is stripped
    ],
)
def test_strings_are_case_sensitive_globs_on_the_stripped_value(pattern: str, value: str,
                                                               holds: bool) -> None:
    ruleset = one_rule(f'{{ Manufacturer = "{pattern}" }}')

    assert (ruleset.match(instance(Manufacturer=value)) is not None) is holds


def test_numbers_must_be_equal() -> None:
    ruleset = one_rule("{ Rows = 480 }")

    assert ruleset.match(instance(Rows=480)) is not None
    assert ruleset.match(instance(Rows=481)) is None


def test_a_number_matches_a_numeric_string_value() -> None:
    assert one_rule("{ SeriesNumber = 3 }").match(instance(SeriesNumber="3")) is not None
    assert one_rule("{ WindowWidth = 1 }").match(instance(WindowWidth="1.0")) is not None


def test_a_string_matches_the_text_of_a_number() -> None:
    assert one_rule('{ Rows = "48?" }').match(instance(Rows=480)) is not None


def test_a_key_the_instance_lacks_or_has_empty_does_not_hold() -> None:
    ruleset = one_rule('{ Manufacturer = "*" }')

    assert ruleset.match(instance(Modality="US")) is None
    assert ruleset.match(instance(Manufacturer="")) is None


def test_multi_valued_attributes_compare_their_backslash_joined_text() -> None:
    ds = instance(ImageType=["DERIVED", "SECONDARY", "OTHER"])

    assert one_rule("{ ImageType = 'DERIVED\\SECONDARY\\OTHER' }").match(ds) is not None
    assert one_rule('{ ImageType = "*SECONDARY*" }').match(ds) is not None
    assert one_rule("{ ImageType = 'DERIVED\\SECONDARY' }").match(ds) is None


def test_a_number_never_equals_a_multi_valued_attribute() -> None:
    assert one_rule("{ WindowWidth = 400 }").match(instance(WindowWidth=[400, 400])) is None


def test_a_real_ultrasound_with_burned_in_text_is_matched_by_its_device_rule() -> None:
    ds = read_testdata("US1_J2KR.dcm")
    ruleset = one_rule('{ Modality = "US", Manufacturer = "G.E.*", ManufacturerModelName = "LOGIQ 700",'
                       " Rows = 480, Columns = 640 }")

    assert ruleset.match(ds) is not None


# --- the quarantine hint -----------------------------------------------------------------------


def test_the_hint_names_the_device_facts_a_rule_would_match() -> None:
    assert missing_rule_hint(acme_us(Manufacturer="ACME")) == \
        "no pixel rule for Modality=US Manufacturer=ACME ManufacturerModelName=X1 Rows=480 Columns=640"


def test_the_hint_quotes_values_with_spaces_and_leaves_out_absent_keys() -> None:
    ds = instance(Modality="US", Manufacturer="G.E. Medical Systems", Rows=480, PatientName="DOE^JOHN")

    assert missing_rule_hint(ds) == \
        'no pixel rule for Modality=US Manufacturer="G.E. Medical Systems" Rows=480'


def test_the_hint_for_an_instance_with_no_device_facts() -> None:
    assert missing_rule_hint(instance(PatientName="DOE^JOHN")) == (
        "no pixel rule for an instance without Modality, Manufacturer, ManufacturerModelName, Rows, Columns")


# --- CTP import --------------------------------------------------------------------------------

CTP_SCRIPT = """\
Burned-in annotation library of the Example Hospital radiology department.
Sections are tried in order; the first signature that matches wins.

**************
     US
**************
ACME
 Sonar 5 full screen
  { Modality.equals("US") *
    Manufacturer.containsIgnoreCase("ACME") *
    [0008,1090].containsIgnoreCase("Sonar 5") *
    Rows.equals("480") *
    Columns.equals("640") }
  (0,0,640,40) (600,440,60,60)

 Sonar 5 reports, any size
  { ManufacturerModelName.startsWith("Sonar") *
    ( SeriesDescription.contains("Report") + SeriesDescription.endsWith("Worksheet") ) }
  (0,0,512,100)

 Not for the research scanner
  { Manufacturer.containsIgnoreCase("ACME") * !StationName.equals("RESEARCH1") }
  (0,0,100,100)

 Exact model, regex
  { ManufacturerModelName.matches("Sonar [0-9]+") }
  (0,0,100,100)

**************
     CT
**************
Vendor private dose page
  { [0019,10a0].contains("DOSE") }
  (0,0,512,110)

Dose screen
  { ImageType.containsIgnoreCase("SECONDARY") * Manufacturer.equalsIgnoreCase("Big*Scanner") }
  (0,0,512,60)
"""


def test_import_ctp_converts_each_expressible_section_in_order() -> None:
    ruleset = rules(import_ctp(CTP_SCRIPT))

    assert [(r.name, dict(r.match), r.regions) for r in ruleset.rules] == [
        ("ACME / Sonar 5 full screen",
         {"Modality": "US", "Manufacturer": "*[Aa][Cc][Mm][Ee]*",
          "ManufacturerModelName": "*[Ss][Oo][Nn][Aa][Rr] 5*", "Rows": 480, "Columns": 640},
         (Region(0, 0, 640, 40), Region(600, 440, 40, 40))),
        ("Sonar 5 reports, any size [1 of 2]",
         {"ManufacturerModelName": "Sonar*", "SeriesDescription": "*Report*"}, (Region(0, 0, 512, 100),)),
        ("Sonar 5 reports, any size [2 of 2]",
         {"ManufacturerModelName": "Sonar*", "SeriesDescription": "*Worksheet"}, (Region(0, 0, 512, 100),)),
        ("Dose screen",
         {"ImageType": "*[Ss][Ee][Cc][Oo][Nn][Dd][Aa][Rr][Yy]*",
          "Manufacturer": "[Bb][Ii][Gg][*][Ss][Cc][Aa][Nn][Nn][Ee][Rr]"},
         (Region(0, 0, 512, 60),)),
    ]


def test_import_ctp_names_the_line_of_each_section_it_skips_and_why() -> None:
    toml = import_ctp(CTP_SCRIPT)
    skipped = [line for line in toml.splitlines() if line.startswith("# skipped:")]

    assert skipped == [
        '# skipped: CTP line 22: { Manufacturer.containsIgnoreCase("ACME") *'
        ' !StationName.equals("RESEARCH1") }: it uses "!" (not), which a rule cannot express',
        '# skipped: CTP line 26: { ManufacturerModelName.matches("Sonar [0-9]+") }:'
        " ManufacturerModelName.matches has no equivalent in a rule",
        '# skipped: CTP line 33: { [0019,10a0].contains("DOSE") }: [0019,10a0] is a private element',
    ]
    assert "# clipped: region (600,440,60,60) to the image" in toml


def test_imported_rules_match_as_ctp_would_ignoring_case() -> None:
    ruleset = rules(import_ctp(CTP_SCRIPT))
    sonar = acme_us(Manufacturer="Acme Medical", ManufacturerModelName="SONAR 5 Pro")
    report = instance(ManufacturerModelName="Sonar 7", SeriesDescription="Daily Report 2")

    assert chosen(ruleset, sonar).name == "ACME / Sonar 5 full screen"
    assert chosen(ruleset, report).name == "Sonar 5 reports, any size [1 of 2]"
    assert ruleset.match(instance(ImageType=["DERIVED", "SECONDARY"], Manufacturer="big*scanner")) is not None
    assert ruleset.match(instance(ImageType="SECONDARY", Manufacturer="BIG SCANNER")) is None


def test_import_ctp_of_a_script_without_sections_is_an_empty_rules_file() -> None:
    assert rules(import_ctp("just a comment\n")).rules == ()


# --- the shipped default rules -----------------------------------------------------------------


def test_the_default_rules_file_loads_with_the_public_layouts() -> None:
    ruleset = load_rules(DEFAULT_RULES)

    assert len(ruleset.rules) == 42
    assert len({r.name for r in ruleset.rules}) == len(ruleset.rules)


def test_the_default_rules_match_known_devices_ignoring_case() -> None:
    ruleset = load_rules(DEFAULT_RULES)
    sequoia = acme_us(Manufacturer="Acuson", ManufacturerModelName="SEQUOIA 512")
    adac_dual = instance(Manufacturer="ADAC", Rows=832, Columns=1024, ProtocolName="DUAL DETECTOR WB")

    assert chosen(ruleset, sequoia).regions == (Region(0, 0, 640, 30),)
    assert chosen(ruleset, adac_dual).name == "ADAC dual detector 832 x 1024"
    assert ruleset.match(acme_us()) is None


# --- preview -----------------------------------------------------------------------------------


def test_preview_of_a_grey_image_is_a_png_of_its_size_with_the_regions_outlined(tmp_path: Path) -> None:
    ds = read_testdata("CT_small.dcm")
    out = tmp_path / "preview.png"

    write_preview(ds, [Region(10, 20, 30, 15), Region(120, 120, 50, 50)], out)

    assert out.stat().st_mode & 0o777 == 0o600  # it may show a patient's name
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (ds.Columns, ds.Rows))
        pixels = image.convert("RGB")
        assert pixels.getpixel((10, 20)) == (255, 0, 0)        # corner of the first region
        assert pixels.getpixel((39, 34)) == (255, 0, 0)        # its opposite corner
        assert pixels.getpixel((127, 127)) == (255, 0, 0)      # the second, clipped to the image
        red, green, blue = pixels.getpixel((70, 70))  # type: ignore[misc]  # elsewhere: grey
        assert red == green == blue


def test_preview_of_a_colour_image_keeps_its_colours_outside_the_outlines(tmp_path: Path) -> None:
    ds = read_testdata("SC_rgb.dcm")
    out = tmp_path / "preview.png"

    write_preview(ds, [Region(0, 0, 20, 20)], out)

    with Image.open(out) as image:
        assert image.size == (ds.Columns, ds.Rows)
        assert image.convert("RGB").getpixel((60, 60)) == tuple(int(v) for v in ds.pixel_array[60, 60])


def test_preview_of_an_instance_without_pixels_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(PixelCleaningFailed, match="no Pixel Data"):
        write_preview(acme_us(), [Region(0, 0, 1, 1)], tmp_path / "preview.png")
    assert not (tmp_path / "preview.png").exists()
