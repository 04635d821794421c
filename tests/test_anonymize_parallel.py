"""Worker processes change nothing but speed: the same files, bytes, summary and map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

from gateway.cli import main

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
