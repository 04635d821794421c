"""The forwarding process never loads the de-identification engine, pydicom or the pixel codecs
(about 25 MB of its memory): it is given settings without profiles, labels or pixel rules, and
reads only the file meta of the spool files it sends. A conversion loads the converter then."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from gateway.forward_process import forwarding_settings
from gateway.settings import load_settings
from gateway.spool import Spool

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = ("pydicom", "numpy", "pynetdicom", "PIL", "gateway.deid.engine", "gateway.transcode")

# Run in a fresh interpreter as the forwarding process runs: its module, then the settings
# it is sent, then what it does with a spool entry before sending it.
CHILD = """
import pickle, sys
from pathlib import Path
import gateway.forward_process
from gateway.forward import proposals
from gateway.spool import Spool

settings = pickle.loads(Path(sys.argv[1]).read_bytes())
spool = Spool(Path(sys.argv[2]))
(entry,) = spool.entries()
view = entry.dataset()
contexts = proposals(entry, convert=True)
assert entry.transfer_syntax_uid and len(view) > 0 and contexts, (entry, contexts)
print(" ".join(sorted(sys.modules)))
"""


def _config_with_everything(tmp_path: Path) -> Path:
    """Profiles, labels and pixel rules: what the serving process needs and the forwarder not."""
    (tmp_path / "labels.csv").write_text("AccessionNumber,diagnosis\nACC-1,Glioma\n")
    (tmp_path / "secret.key").write_text("ab" * 32)
    rules = tmp_path / "pixel-rules.toml"
    shutil.copy(PROJECT / "config" / "pixel-rules.toml", rules)
    config = tmp_path / "gw.toml"
    config.write_text(f"""
[gateway]
data_dir = "{tmp_path / 'var'}"
secret_file = "{tmp_path / 'secret.key'}"

[pixels]
rules_file = "{rules}"

[profiles.teaching.edits]
set = {{ PatientName = "{{label.diagnosis}}" }}

[labels]
file = "{tmp_path / 'labels.csv'}"
key = "AccessionNumber"

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
    return config


def test_the_forwarding_process_reads_its_settings_and_a_spool_entry_without_the_engine(
        tmp_path: Path) -> None:
    settings = load_settings(_config_with_everything(tmp_path))
    assert settings.profiles and settings.labels is not None and settings.pixels is not None
    given = forwarding_settings(settings)
    assert (given.secret, given.profiles, given.labels, given.pixels) == (None, {}, None, None)
    assert [d.profile for d in given.destinations] == ["default", "teaching"]
    (tmp_path / "settings.pickle").write_bytes(pickle.dumps(given))
    spool = Spool(tmp_path / "spool").prepare(owner=True)
    spool.put(Path(get_testdata_file("CT_small.dcm")).read_bytes(),
              str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPClassUID),
              "1.2.840.10008.1.2.1")

    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "settings.pickle"),
                            str(tmp_path / "spool")], capture_output=True, text=True, timeout=60,
                           cwd=PROJECT)

    assert child.returncode == 0, child.stderr
    loaded = child.stdout.split()
    assert "gateway.forward" in loaded and "sqlalchemy" in loaded  # the list is the real one
    assert [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY] == []
