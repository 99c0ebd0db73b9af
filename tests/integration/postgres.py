"""A throwaway PostgreSQL server (Debian's ``postgresql``) on loopback, one per test run.

The server refuses to run as root: as root the cluster is made and run as the ``postgres``
user (``runuser``), in a temporary directory that user owns. ``make integration`` installs
the package when missing (the Makefile's ``postgresql`` target). Without it the tests that
need it are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true the PostgreSQL tests cannot be skipped")
    pytest.skip(reason)


def find_bindir() -> str | None:
    """The newest installed server's bin directory (/usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


class Server:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="mirror-pg-")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Imported here: conftest imports this module for its fixtures.
        from tests.integration.conftest import free_port

        self.port = free_port()
        self.data = os.path.join(self.dir, "data")

    def run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, os.path.join(self.bindir, program), *args],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        if done.returncode:
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        # --no-sync / fsync off: a throwaway cluster; C locale: paths compare as bytes.
        self.run("initdb", "-D", self.data, "-A", "trust", "-U", "mirror", "--no-sync",
                 "--locale=C", "-E", "UTF8")
        self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w",
                 "-o", f"-k {self.dir} -h 127.0.0.1 -p {self.port} -F", "start")

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://mirror@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    bindir = find_bindir()
    if bindir is None:
        _unavailable("Debian's postgresql is not installed (make integration installs it "
                     "as root)")
    assert bindir is not None
    server = Server(bindir)
    try:
        server.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        server.stop()
        _unavailable(f"PostgreSQL did not start: {e}")
    yield server
    server.stop()


_counter = iter(range(1, 10**6))


@pytest.fixture
def postgres_url(postgres_server: Server) -> str:
    """The URL of a fresh database on the run's PostgreSQL server."""
    return postgres_server.new_database(f"t{os.getpid()}_{next(_counter)}")
