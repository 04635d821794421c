"""Pixel cleaning throughput (frames/s): the pixel stage as the gateway runs it on an at-risk
instance (read, blank a banner in every frame, write), for native and compressed inputs.

In-process and single-threaded, on pydicom's test images; each input is cleaned until a time
budget is spent. Part of `make bench` (bench/run.py), or alone: `python bench/pixels.py`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from gateway.pixels.clean import clean_pixels
from gateway.pixels.policy import PixelPolicy
from gateway.pixels.rules import parse_rules

NATIVE = ("693_UNCR.dcm", "US1_UNCR.dcm", "emri_small.dcm")
COMPRESSED = ("693_J2KR.dcm", "US1_J2KR.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm")
BUDGET_SECONDS = 2.0


def _policy_for(ds: pydicom.Dataset) -> PixelPolicy:
    """A rule that matches this image and blanks its top tenth (a typical banner)."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    text = (f'[[rules]]\nname = "bench"\nmatch = {{ Rows = {rows}, Columns = {columns} }}\n'
            f"regions = [[0, 0, {columns}, {max(1, rows // 10)}]]\n")
    return PixelPolicy(rules=parse_rules(text, "bench"), unmatched="quarantine", fill=0)


def measure(name: str) -> dict[str, object]:
    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    policy = _policy_for(ds)
    clean_pixels(data, policy)  # warm: codec plugins loaded
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < BUDGET_SECONDS or len(times) < 3:
        begin = time.perf_counter()
        clean_pixels(data, policy)
        times.append(time.perf_counter() - begin)
    per_instance = statistics.median(times)
    return {"file": name, "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
            "size": f"{ds.Columns}x{ds.Rows}x{frames}", "frames_per_s": round(frames / per_instance, 1)}


def measure_all() -> dict[str, list[dict[str, object]]]:
    return {"native": [measure(n) for n in NATIVE], "compressed": [measure(n) for n in COMPRESSED]}


def print_pixels(report: dict[str, list[dict[str, object]]]) -> None:
    print("\npixel cleaning (read, blank a banner in every frame, write; one thread)")
    print("  input        file                                  frames/s   transfer syntax")
    for kind, rows in report.items():
        for row in rows:
            print(f"  {kind:<11}  {row['file']:<36} {row['frames_per_s']:>9}   {row['transfer_syntax']}"
                  f" ({row['size']})")


if __name__ == "__main__":
    print_pixels(measure_all())
