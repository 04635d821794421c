"""What one PostgreSQL server does for gateway nodes: the CPU of its processes and the
commits and rows written in a database, so that the bench can say how many instances per
second one server carries before the map (not the gateway) is the limit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    cpu_seconds: float  # the server's processes, its exited backends included
    commits: int
    rows_written: int  # inserted + updated

    def __sub__(self, other: Load) -> Load:
        return Load(self.cpu_seconds - other.cpu_seconds, self.commits - other.commits,
                    self.rows_written - other.rows_written)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def server_cpu_seconds(postmaster_pid: int) -> float:
    """The postmaster's own CPU, its reaped children's (exited backends), and its live ones'."""
    fields = _stat_fields(postmaster_pid)  # after ")": state is [0]; utime [11] .. cstime [14]
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(int(entry.name))
        except OSError:
            continue
        if int(child[1]) == postmaster_pid:  # ppid
            ticks += int(child[11]) + int(child[12])
    return ticks / TICKS


def database_counts(url: str) -> tuple[int, int]:
    """Commits and rows written in the database of a ``postgresql+psycopg://`` URL."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as connection:
        connection.execute("SELECT pg_stat_force_next_flush()")
        row = connection.execute(
            "SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database "
            "WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def load(postmaster_pid: int, url: str) -> Load:
    commits, rows = database_counts(url)
    return Load(server_cpu_seconds(postmaster_pid), commits, rows)
