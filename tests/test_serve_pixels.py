"""Burned-in text through the running gateway: a modality sends ultrasound by C-STORE; the
archive receives it with the device's banner blanked, and an unknown device's image waits in
quarantine with the facts a rule needs, until a rule is added and the entry released."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from netpeers import DestinationSpec, Peers, pydicom_file, requires_dcmtk, run_cli, storescu

pytestmark = requires_dcmtk

GE_RULE = """
[[rules]]
name = "GE LOGIQ 700 banner"
match = { Modality = "US", Manufacturer = "G.E.*", Rows = 480, Columns = 640 }
regions = [[0, 0, 640, 40]]
"""
PHILIPS_RULE = """
[[rules]]
name = "Philips 800 x 600"
match = { Modality = "US", Manufacturer = "Philips*", Rows = 600, Columns = 800 }
regions = [[0, 0, 800, 60]]
"""


def test_ultrasound_is_cleaned_on_the_way_and_an_unknown_device_waits_for_its_rule(
        peers: Peers, tmp_path: Path) -> None:
    archive = peers.archive()
    rules = tmp_path / "gw" / "rules.toml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(GE_RULE)
    gateway = peers.gateway([DestinationSpec("archive", archive.port)],
                            forward_extra=f'\n[pixels]\nrules_file = "{rules}"\nunmatched = "quarantine"\n')
    src = tmp_path / "src"
    src.mkdir()
    ge, philips = src / "ge.dcm", src / "philips.dcm"
    shutil.copy(pydicom_file("US1_UNCR.dcm"), ge)
    shutil.copy(pydicom_file("OBXXXX1A.dcm"), philips)

    sent = storescu(gateway.port, [ge, philips])
    assert sent.returncode == 0, sent.output  # both answered: one spooled, one quarantined
    gateway.wait_forwarded(1)
    [received] = [pydicom.dcmread(p) for p in archive.files()]
    assert received.Rows == 480 and received.BurnedInAnnotation == "NO"
    assert (received.pixel_array[:40] == 0).all()
    assert (received.pixel_array[40:] == pydicom.dcmread(ge).pixel_array[40:]).all()
    [record] = gateway.quarantine()
    assert record["reason"] == "burned-in-annotation"
    assert "Rows=600" in record["message"] and "Philips" in record["message"]

    rules.write_text(GE_RULE + PHILIPS_RULE)  # the administrator adds the device's rule
    released = run_cli(gateway.workdir, "quarantine", "release", "--config", "gateway.toml", "--all")
    assert released.returncode == 0, released.stdout + released.stderr
    gateway.wait_forwarded(2)
    philips_out = [pydicom.dcmread(p) for p in archive.files() if pydicom.dcmread(p).Rows == 600]
    assert len(philips_out) == 1 and philips_out[0].BurnedInAnnotation == "NO"
