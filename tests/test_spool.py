"""What the forwarder sends of a spool entry: the data set after the file meta group, found by
walking group 0002 (whatever its group length says), and nothing at all for a file that is not
Part-10."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.errors import MalformedInstance
from gateway.receive import part10_header
from gateway.spool import Spool, part10_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def dataset_bytes() -> bytes:
    """CT_small's data set as pydicom writes it (no file meta)."""
    buffer = io.BytesIO()
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def test_a_spool_entry_sends_exactly_the_data_set_it_holds(tmp_path: Path) -> None:
    data = dataset_bytes()
    spool = Spool(tmp_path / "spool").prepare(owner=True)
    entry = spool.put(part10_header(CT, "1.2.3.4", EXPLICIT_LE) + data, CT, EXPLICIT_LE, "1.2.3.4")
    view = entry.dataset()
    assert bytes(view) == data
    assert pydicom.dcmread(io.BytesIO(bytes(view)), force=True).Modality == "CT"


def test_a_reused_file_holds_only_its_new_entry(tmp_path: Path) -> None:
    """Forwarded files are written over by later entries: a shorter new entry must not keep
    the old one's tail, and the old entry must be gone from the queue."""
    data = dataset_bytes()
    spool = Spool(tmp_path / "spool").prepare(owner=True)
    first = spool.put(part10_header(CT, "1.2.3.4", EXPLICIT_LE) + data + b"\x00" * 5000, CT,
                      EXPLICIT_LE, "1.2.3.4")
    inode = first.path.stat().st_ino
    spool.remove(first.id)
    assert spool.ids() == []
    second = spool.put(part10_header(CT, "1.2.3.5", EXPLICIT_LE) + data, CT, EXPLICIT_LE,
                       "1.2.3.5")
    assert second.path.stat().st_ino == inode  # the same file, written over
    assert second.path.stat().st_mode & 0o777 == 0o600
    assert spool.ids() == [second.id]
    assert bytes(second.dataset()) == data
    assert second.size == second.path.stat().st_size


def test_a_restart_drops_files_kept_for_reuse(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").prepare(owner=True)
    entry = spool.put(part10_header(CT, "1.2.3.4", EXPLICIT_LE) + dataset_bytes(), CT,
                      EXPLICIT_LE, "1.2.3.4")
    spool.remove(entry.id)
    assert list(spool.staging.iterdir())  # kept for the next entry
    Spool(tmp_path / "spool").prepare(owner=True)
    assert not list(spool.staging.iterdir())


def test_the_meta_group_is_walked_not_trusted() -> None:
    data = dataset_bytes()
    header = part10_header(CT, "1.2.3.4", EXPLICIT_LE)
    without_group_length = header[:132] + header[144:]
    assert bytes(part10_dataset(without_group_length + data)) == data
    wrong_group_length = header[:140] + (3).to_bytes(4, "little") + header[144:]
    assert bytes(part10_dataset(wrong_group_length + data)) == data


@pytest.mark.parametrize("data", [b"", bytes(132), bytes(128) + b"DICM",
                                  bytes(128) + b"DICM\x02\x00\x10\x00OB\x00\x00\xff\xff"])
def test_what_is_not_a_part10_file_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedInstance):
        part10_dataset(data)


def test_every_spool_write_is_synced_before_it_is_an_entry(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is not traded for speed: each entry's file (new, or a forwarded one written
    over) is fsynced, then the folder after the rename, before ``put`` returns."""
    import os

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    spool = Spool(tmp_path / "spool").prepare(owner=True)
    data = part10_header(CT, "1.2.3.4", EXPLICIT_LE) + dataset_bytes()
    first = spool.put(data, CT, EXPLICIT_LE, "1.2.3.4")
    spool.remove(first.id)  # its file is now kept to be written over
    second = spool.put(data, CT, EXPLICIT_LE, "1.2.3.5")
    assert len(synced) == 4  # file, folder; file, folder
    assert second.path.read_bytes() == data
