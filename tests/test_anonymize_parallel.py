"""Worker processes change nothing but speed: the same files, bytes, summary and map."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.anonymize import Anonymizer, anonymize_tree
from gateway.cli import main
from gateway.deid.engine import Policy
from gateway.deid.profile import build_profile
from gateway.quarantine import Quarantine
from gateway.state import PseudonymStore

NAMES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb_rle.dcm",
         "MR_small_RLE.dcm"]  # the last shares MR_small's SOP Instance UID: a duplicate


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.dcm"))}


def run(tmp: Path, name: str, workers: int, capsys) -> tuple[dict[str, object], dict[str, bytes]]:  # type: ignore[no-untyped-def]
    work = tmp / name
    work.mkdir()
    (work / "gw.toml").write_text(f'[gateway]\ndata_dir = "{work / "var"}"\n'
                                  f'secret_file = "{tmp / "secret.key"}"\n')
    code = main(["anonymize", "--config", str(work / "gw.toml"), "--json", "--workers",
                 str(workers), str(tmp / "src"), str(work / "out")])
    summary = json.loads(capsys.readouterr().out)
    assert code == (1 if summary["quarantined"] else 0)
    return summary, tree(work / "out")


def test_two_workers_write_exactly_what_one_writes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "secret.key").write_text("cd" * 32)
    src = tmp_path / "src"
    for copy in range(8):  # 48 files: enough for the worker pool to be used
        folder = src / f"set{copy}"
        folder.mkdir(parents=True)
        for name in NAMES:
            shutil.copy(get_testdata_file(name), folder / name)
    serial, serial_tree = run(tmp_path, "serial", 1, capsys)
    parallel, parallel_tree = run(tmp_path, "parallel", 2, capsys)
    assert serial["files_in"] == parallel["files_in"] == 48
    assert parallel == serial
    assert parallel["duplicates"] == serial["duplicates"] > 0
    assert parallel_tree == serial_tree


def test_a_map_that_cannot_be_opened_stops_the_workers_and_leaves_no_files(tmp_path: Path,
                                                                            capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "secret.key").write_text("cd" * 32)
    src = tmp_path / "src"
    for copy in range(40):  # 240 files: the workers are still busy when the map fails
        folder = src / f"set{copy}"
        folder.mkdir(parents=True)
        for name in NAMES:
            shutil.copy(get_testdata_file(name), folder / name)
    (tmp_path / "blocked").write_text("a file where the map's folder would be")
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
                      f'secret_file = "{tmp_path / "secret.key"}"\n'
                      f'database_url = "sqlite:///{tmp_path / "blocked" / "map.db"}"\n')
    code = main(["anonymize", "--config", str(config), "--workers", "2", str(src),
                 str(tmp_path / "out")])
    assert code == 3  # a state error, named on standard error
    assert "cannot open the database" in capsys.readouterr().err
    out = tmp_path / "out"
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert left == []  # neither clean copies without their map entries nor temporaries


def test_ctrl_c_stops_the_workers_and_leaves_no_temporaries(tmp_path: Path) -> None:
    """A source file that is a FIFO holds one worker until the test opens it: the files after
    it are finished by the other worker but not yet taken when Ctrl-C comes."""
    (tmp_path / "secret.key").write_text("cd" * 32)
    src, dst = tmp_path / "src", tmp_path / "out"
    for copy in range(20):
        folder = src / f"set{copy:02d}"
        folder.mkdir(parents=True)
        for name in NAMES[:4]:
            shutil.copy(get_testdata_file(name), folder / name)
    fifo = src / "set05" / "held.dcm"
    os.mkfifo(fifo)
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
                      f'secret_file = "{tmp_path / "secret.key"}"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "anonymize", "--config", str(config),
         "--workers", "2", str(src), str(dst)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        # As from a terminal: a test run started in the background (CI, `nohup ... &`) has
        # Ctrl-C ignored, and the command rightly keeps ignoring it then.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        # The files before the held one are taken (renamed into place); some after it wait.
        while not (any(dst.rglob("*.dcm")) and any(p.name.endswith(".tmp") for p in dst.rglob(".*"))):
            assert process.poll() is None and time.monotonic() < deadline, "did not get there"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal does: the whole group
        # The main thread must see the interrupt before the held worker is let go: on a loaded
        # machine it may not run at once, and the work left could then finish first (exit 0).
        time.sleep(1.0)
        with open(fifo, "wb"):
            pass  # lets the held worker go on (an empty file: skipped)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130
    assert b"interrupted" in err and b"Traceback" not in err
    assert [p for p in dst.rglob("*") if p.name.endswith(".tmp")] == []
    outputs = list(dst.rglob("*.dcm"))
    assert outputs  # what was taken before Ctrl-C stays, whole, and can be traced back
    store = PseudonymStore(f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    try:
        for path in outputs:
            ds = pydicom.dcmread(path)
            assert ds.PatientIdentityRemoved == "YES"
            assert [e.kind for e in store.lookup(ds.SOPInstanceUID)] == ["uid"]
    finally:
        store.close()


def test_ctrl_c_right_after_an_output_is_in_place_still_maps_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The race behind the flaky test above, made deterministic: Ctrl-C arrives just after a
    clean copy was renamed into place. That copy stays, so its pseudonyms must be in the map
    (else it could never be traced back)."""
    import gateway.anonymize

    (tmp_path / "secret.key").write_text("cd" * 32)
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in NAMES[:2]:
        shutil.copy(get_testdata_file(name), src / name)
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
                      f'secret_file = "{tmp_path / "secret.key"}"\n')
    real_rename = os.rename

    def rename_then_ctrl_c(source: str, target: str) -> None:
        real_rename(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(gateway.anonymize.os, "rename", rename_then_ctrl_c)
    assert main(["anonymize", "--config", str(config), "--workers", "1", str(src), str(dst)]) == 130
    monkeypatch.undo()
    outputs = list(dst.rglob("*.dcm"))
    assert len(outputs) == 1
    store = PseudonymStore(f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    try:
        uid = pydicom.dcmread(outputs[0]).SOPInstanceUID
        assert [e.kind for e in store.lookup(uid)] == ["uid"]
    finally:
        store.close()


class _CollectedDuringCtrlC:
    """An object whose finalizer is running when Ctrl-C comes: Python drops the
    KeyboardInterrupt raised there (it goes to sys.unraisablehook, not to the run)."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    for copy in range(8):  # 48 files: two workers are used
        folder = src / f"set{copy}"
        folder.mkdir(parents=True)
        for name in NAMES:
            shutil.copy(get_testdata_file(name), folder / name)
    dropped: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    # As in a terminal (a test run in the background may have Ctrl-C ignored).
    monkeypatch.setattr(signal, "getsignal", lambda _s: signal.default_int_handler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    anonymizer = Anonymizer(Policy(build_profile()), b"k" * 32, lambda: _NoMap(),
                            Quarantine(tmp_path / "quarantine"), workers=workers)

    def progress(done: int, _total: int) -> None:
        if done == 3:
            _CollectedDuringCtrlC()  # collected at once, Ctrl-C inside its finalizer

    try:
        with pytest.raises(KeyboardInterrupt):
            anonymize_tree(src, dst, anonymizer, progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert dropped == [KeyboardInterrupt]  # Python did drop it where it landed
    assert len(list(dst.rglob("*.dcm"))) == 3  # the run stopped at the next file
    assert [p for p in dst.rglob("*") if p.name.endswith(".tmp")] == []


class _NoMap:
    def record(self, pseudonyms: object) -> None:
        pass

    def close(self) -> None:
        pass
