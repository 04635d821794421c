"""Routing filters with two real archives: a destination with ``modalities = ["MR"]`` gets
MR instances only; the instances it is not meant for are counted as filtered."""

from __future__ import annotations

from pathlib import Path

import pydicom
from netpeers import (
    DestinationSpec,
    Peers,
    ct_template,
    requires_dcmtk,
    storescu,
    write_compressed,
    write_instance,
    write_study,
)
from pydicom.uid import UID, generate_uid

pytestmark = requires_dcmtk
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_modality_filter_routes_ct_to_the_first_destination_only(
    peers: Peers, tmp_path: Path
) -> None:
    everything = peers.archive("everything")
    mr_only = peers.archive("mr-only")
    gateway = peers.gateway([
        DestinationSpec("everything", everything.port),
        DestinationSpec("mr-only", mr_only.port, extra='modalities = ["MR"]'),
    ])
    src = tmp_path / "src"
    ct = write_study(src, "MRN-ROUTE-1", "Route^Ct", series=2, per_series=2)
    nm = write_compressed(src)  # modality NM, JPEG 2000
    mr_template = ct_template()
    mr_template.Modality = "MR"
    mr_template.SOPClassUID = mr_template.file_meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
    mr = write_instance(src / "mr", mr_template, "MRN-ROUTE-1", "Route^Ct", generate_uid(),
                        generate_uid())

    for files in (ct.paths, [nm.path], [mr.path]):
        sent = storescu(gateway.port, files)
        assert sent.returncode == 0, sent.output
        assert len(sent.acknowledged()) == len(files), sent.output
    not_mr = len(ct.paths) + 1

    report = gateway.wait_forwarded(not_mr + 1 + 1)  # everything: CT, NM and MR; mr-only: MR
    assert report["received"] == not_mr + 1
    everything_status = report["destinations"]["everything"]
    mr_status = report["destinations"]["mr-only"]
    assert everything_status == {**everything_status, "pending": 0, "forwarded": not_mr + 1,
                                 "filtered": 0, "dead_lettered": 0}
    assert mr_status == {**mr_status, "pending": 0, "forwarded": 1, "filtered": not_mr,
                         "dead_lettered": 0}
    assert report["forwarded"] == not_mr + 2

    assert sorted(str(ds.Modality) for ds in everything.datasets()) == \
        sorted(["CT"] * len(ct.paths) + ["NM", "MR"])
    assert [str(ds.Modality) for ds in mr_only.datasets()] == ["MR"]
    assert pydicom.dcmread(mr_only.files()[0]).PatientIdentityRemoved == "YES"
    assert gateway.stop() == 0
