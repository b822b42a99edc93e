"""A real, throwaway PostgreSQL cluster for the tests (issue 18): ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free loopback port, stopped at the end of the session.

PostgreSQL refuses to run as root (CI runs as root): then the cluster belongs to the
``postgres`` system user (Debian's package creates it) and its commands run through
``runuser``. The server binaries come from ``PATH`` or ``/usr/lib/postgresql/*/bin``
(``make test`` installs Debian's package when they are missing). Without them a test needing
PostgreSQL is skipped on a developer's machine, and fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "cds"  # the cluster's superuser (trust authentication, loopback only)
_counter = itertools.count()


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name)
                        if p.parent.parent.name.isdigit() else 0)
    return candidates[-1].parent if candidates else None


def require_binaries() -> Path:
    found = bin_dir()
    if found is not None:
        return found
    message = ("PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs "
               "them (Debian package postgresql)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " -- under CI this is a failure, not a skip")
    pytest.skip(message)


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


def _owner() -> str | None:
    """The system user the cluster runs as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root needs the 'postgres' system user (Debian's package "
                    "postgresql creates it)")
    return "postgres"


class Cluster:
    """A cluster in a temporary directory: ``start``, ``stop`` (the data stays, a test can
    take the server away and bring it back on the same port), ``remove``."""

    def __init__(self) -> None:
        self.binaries = require_binaries()
        self.owner = _owner()
        self.top = Path(tempfile.mkdtemp(prefix="movement-cds-pg-"))
        self.data, sockets = self.top / "data", self.top / "sockets"
        sockets.mkdir()
        if self.owner:
            info = pwd.getpwnam(self.owner)
            for p in (self.top, sockets):
                os.chown(p, info.pw_uid, info.pw_gid)
        self.port = free_port()
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}"
        self._options = (f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1 "
                         "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                         "-c max_connections=60")
        self._run([str(self.binaries / "initdb"), "-D", str(self.data), "-U", USER,
                   "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])

    def _run(self, cmd: list[str], check: bool = True) -> None:
        done = subprocess.run(_as_owner(cmd, self.owner), capture_output=True, text=True,
                              timeout=120, check=False, cwd="/")
        if check and done.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._run([str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l",
                   str(self.top / "server.log"), "-o", self._options, "-w", "-t", "60",
                   "start"])

    def stop(self, check: bool = True, mode: str = "fast") -> None:
        self._run([str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                   "stop"], check=check)

    def remove(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A started cluster, stopped and removed at the end."""
    c = Cluster()
    try:
        c.start()
        try:
            yield c
        finally:
            c.stop(check=False, mode="immediate")  # throwaway: no checkpoint needed
    finally:
        c.remove()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_database(server: str, *, migrate: bool = True) -> str:
    """A fresh, empty database on the cluster (migrated to the head unless told not to);
    its URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server}/{name}"
    if migrate:
        from cds_service._db import upgrade

        upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL cluster for the test session (its base URL)."""
    with cluster() as c:
        yield c.url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database, migrated, on the session's cluster."""
    return new_database(postgres_server)
