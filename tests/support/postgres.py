"""A throwaway PostgreSQL server on loopback for the inventory's PostgreSQL tests.

The tests start the server they need: :func:`postgres_server` runs ``initdb`` into a temporary
directory and ``pg_ctl start`` on a free 127.0.0.1 port (socket in the same directory, never
the system's), creates a database and yields its SQLAlchemy URL; the server and its files are
removed afterwards. PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user (Debian's package creates it). Set ``FLEETOPS_TEST_POSTGRES_URL`` to use a
server of your own instead. Without PostgreSQL binaries (``make test`` installs Debian's
``postgresql``), :func:`postgres_server` yields None and the tests say so when they skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE = "fleetops_test"


def _binaries() -> Path | None:
    """The directory holding initdb and pg_ctl (PATH first, then Debian's versioned ones)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(versions[0]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """The URL of a fresh database on a throwaway server, or None without PostgreSQL."""
    given = os.environ.get("FLEETOPS_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    binaries = _binaries()
    if binaries is None:
        yield None
        return
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            yield None
            return
        run_as = ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="fleetops-pg-"))
    if run_as:
        shutil.chown(directory, user="postgres")
    data, port = directory / "data", _free_port()
    pg_ctl = [*run_as, str(binaries / "pg_ctl"), "-D", str(data)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "check": True}
    try:
        subprocess.run(
            [*run_as, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            **quiet,  # type: ignore[arg-type]
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={directory} "
            "-c fsync=off -c full_page_writes=off"
        )
        subprocess.run(
            [*pg_ctl, "-o", options, "-l", str(directory / "server.log"), "-w", "start"],
            **quiet,  # type: ignore[arg-type]
        )
        try:
            subprocess.run(
                [
                    *run_as, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                    "-U", "postgres", DATABASE,
                ],
                **quiet,  # type: ignore[arg-type]
            )  # fmt: skip
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DATABASE}"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], **{**quiet, "check": False})  # type: ignore[arg-type]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
