"""The file-descriptor limit fits the configuration: raised at start-up to what
max_associations and max_pending_connections need, and check-config names the keys and the fix
when the hard limit cannot fit them (a gateway at its limit refuses senders)."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable

import pytest

SCRIPT = """
import resource, sys
from gateway.resources import check_descriptor_limit, descriptors_needed, raise_descriptor_limit
from gateway.settings import parse_settings
settings = parse_settings({"gateway": {"max_associations": int(sys.argv[1]),
                                       "max_pending_connections": 32}})
needed = descriptors_needed(settings)
soft, hard = raise_descriptor_limit(needed)
print(needed, soft, hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
try:
    check_descriptor_limit(settings)
    print("fits")
except ValueError as exc:
    print(exc)
"""


def limited(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run(max_associations: int, soft: int, hard: int) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(max_associations)],
                          preexec_fn=limited(soft, hard), capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.splitlines()


def test_the_soft_limit_is_raised_to_what_the_configuration_needs() -> None:
    numbers, verdict = run(500, soft=256, hard=4096)
    needed, soft, hard, in_force = map(int, numbers.split())
    assert needed == 128 + 2 * 500 + 32
    assert soft == in_force == needed and hard == 4096
    assert verdict == "fits"


def test_a_hard_limit_too_low_is_named_with_the_keys_and_the_fix() -> None:
    numbers, verdict = run(500, soft=256, hard=512)
    needed, soft, hard, in_force = map(int, numbers.split())
    assert soft == in_force == 512 == hard  # raised as far as allowed
    assert "gateway.max_associations" in verdict and "LimitNOFILE" in verdict
    assert str(needed) in verdict


def test_a_limit_already_high_enough_is_left_alone() -> None:
    numbers, _ = run(10, soft=4096, hard=4096)
    assert numbers.split()[1:] == ["4096", "4096", "4096"]


def test_malloc_arenas_are_capped_unless_the_administrator_chose_a_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from gateway.resources import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # their choice stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")


def test_a_table_asked_for_by_several_associations_at_once_is_built_once() -> None:
    """Four associations starting together used to build four copies of the IOD tables at
    once (peak memory that glibc then keeps); the others now wait for the first build."""
    import threading
    import time

    from gateway.deid.once import built_once

    builds: list[str] = []

    @built_once
    def table(name: str) -> list[str]:
        builds.append(name)
        time.sleep(0.2)  # long enough that every thread asks while it is being built
        return [name]

    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(table("iod"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert builds == ["iod"]
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert table("other") == ["other"] and builds == ["iod", "other"]


def test_the_engine_tables_are_built_once_when_parallel_associations_start() -> None:
    """The real tables, asked for by threads at once in a fresh interpreter: one build each."""
    script = """
import threading, json, gzip
from gateway.deid import iod
calls = []
real = gzip.decompress
gzip.decompress = lambda data: (calls.append(1), real(data))[1]
threads = [threading.Thread(target=iod._tables) for _ in range(4)]
[t.start() for t in threads]; [t.join(60) for t in threads]
print(len(calls))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["1"]
