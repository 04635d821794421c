"""A real PostgreSQL server for the tests: one per session, one new database per test.

Use it from a test module as a plugin (import ``PgServer`` for annotations under
``TYPE_CHECKING`` only: a plain import first would keep pytest from rewriting its asserts)::

    pytest_plugins = ["pgserver"]

- ``postgres_server`` (session): the running :class:`PgServer`; ``stop()``, ``start()`` and
  ``restart()`` it mid-test to simulate an outage (the next test gets it running again).
- ``postgres_url`` (per test): ``postgresql+psycopg://postgres@127.0.0.1:PORT/<new database>``.
- ``postgres_server.new_database()`` makes another empty database (e.g. a restore target).

The server runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses root),
with its data and socket in a private temporary folder, listening on 127.0.0.1 only with trust
authentication, and ``fsync=off``: a test database need not survive a power cut. Tests skip with
the reason when PostgreSQL or psycopg is missing (``scripts/install-system-deps.sh`` installs
the server, the ``test`` extra the driver).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
SUPERUSER = "postgres"
START_SECONDS = 30  # bound on pg_ctl's waits (start, stop)
COMMAND_SECONDS = 60


def find_bindir() -> Path | None:
    """PostgreSQL's server programs: pg_config's answer, else the newest Debian version folder."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=COMMAND_SECONDS, check=True).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary folder, on a free loopback port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Under /tmp when root: a TMPDIR inside root's home would be closed to the postgres user.
        base = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-", dir=base))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._owner = self._server_account()

    # -- who runs it --------------------------------------------------------------------------

    @staticmethod
    def _server_account() -> pwd.struct_passwd | None:
        """The postgres account when we are root (PostgreSQL will not run as root), else None."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL refuses to run as root and there is no postgres user")

    def _run(self, *args: str, timeout: float = COMMAND_SECONDS) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._owner is not None:
            kwargs = {"user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": []}
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, **kwargs)

    # -- life cycle ---------------------------------------------------------------------------

    def init(self) -> None:
        self.sockets.mkdir()
        if self._owner is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        os.chmod(self.root, 0o700)
        result = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                           "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        # Trust only the unix socket (inside our private folder) and 127.0.0.1.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        """Start (again) on the same port; a first start picks a free one, retrying if it was
        taken meanwhile."""
        for _ in range(3):
            if not self.port:
                self.port = _free_port()
            options = (f"-p {self.port} -c listen_addresses={LOOPBACK} "
                       f"-c unix_socket_directories={self.sockets} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            result = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                               str(self.log), "-o", options, "-w", "-t", str(START_SECONDS),
                               "start", timeout=START_SECONDS + 10)
            if result.returncode == 0:
                return
            if "could not bind" not in self.log_text() and "in use" not in self.log_text():
                break
            self.port = 0
        raise RuntimeError(f"PostgreSQL did not start: {result.stdout.strip()} "
                           f"{result.stderr.strip()}\n{self.log_text()[-2000:]}")

    def stop(self) -> None:
        """Stop fast (open sessions are ended); kill the postmaster if it does not go."""
        if not self.running():
            return
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t",
                  str(START_SECONDS), "stop", timeout=START_SECONDS + 10)
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + START_SECONDS
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            (self.data / "postmaster.pid").unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and self._alive(pid)

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie is gone for our purposes.
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # -- databases ----------------------------------------------------------------------------

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(host=LOOPBACK, port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')  # fast with fsync off
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A running PostgreSQL for the whole session (skips when PostgreSQL or psycopg is absent)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[test]' (or '.[postgresql]')")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; "
                    "scripts/install-system-deps.sh does it)")
    server = PgServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture()
def postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A new empty database on the session's server; the server runs again after the test even
    if the test stopped it."""
    postgres_server.ensure_running()
    yield postgres_server.new_database()
    postgres_server.ensure_running()
