"""The forwarding process gets only what sending needs (no key and no patient table, which hold
or unlock original identifiers), and one that cannot start is reported at once. Its work is
covered end to end by the serve tests."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

from gateway.errors import StateError
from gateway.forward_process import START_SECONDS, ForwardProcess
from gateway.settings import DeidentifySettings, load_settings
from gateway.spool import Spool


def write_config(tmp_path: Path, gateway: str = "", sections: str = "") -> Path:
    """A config with a secret and one destination, plus ``gateway`` keys and ``sections``."""
    (tmp_path / "secret.key").write_text("ab" * 32)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
data_dir = "{tmp_path / 'var'}"
secret_file = "{tmp_path / 'secret.key'}"
{gateway}
{sections}
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
port = 11112
""")
    return config


def test_the_forwarding_process_gets_no_key_and_no_patient_table(tmp_path: Path) -> None:
    (tmp_path / "subjects.csv").write_text("MRN-0001,SUBJ-1\n")
    config = write_config(tmp_path, sections=f"""[deidentify.patient]
mode = "table"
table_file = "{tmp_path / 'subjects.csv'}"
""")
    settings = load_settings(config)
    assert settings.secret is not None and settings.deidentify.patient.table  # as served

    handed_over = ForwardProcess(settings, Spool(tmp_path / "spool")).settings
    assert handed_over.secret is None
    assert handed_over.deidentify == DeidentifySettings()
    assert handed_over.destinations == settings.destinations
    sent = pickle.dumps(handed_over)  # what goes over the socket pair
    assert b"MRN-0001" not in sent and b"ab" * 32 not in sent


def test_a_forwarding_process_that_cannot_start_is_reported_not_waited_for(tmp_path: Path) -> None:
    config = write_config(tmp_path,
                          gateway='database_url = "sqlite:////proc/no-such-folder/gateway.db"')
    forwarding = ForwardProcess(load_settings(config), Spool(tmp_path / "spool"))
    started = time.monotonic()
    with pytest.raises(StateError, match="forwarding process did not start"):
        forwarding.start()
    assert time.monotonic() - started < START_SECONDS / 2  # its exit is noticed, not waited out


def test_forwarding_runs_below_receiving_priority(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, sections="[forward]\nnice = 7"))
    settings.prepare_data_dir()
    forwarding = ForwardProcess(settings, Spool(settings.spool_dir).prepare(owner=True)).start()
    try:
        process = forwarding._process
        assert process is not None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == min(ours + 7, 19)
    finally:
        forwarding.stop(1.0)
