"""A throwaway PostgreSQL server on loopback for tests (Debian's ``postgresql`` package).

``.ci/run`` installs the package when it is missing, so in CI (``CI=true``) a missing server is a
failure; on a developer's box without it the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/pg_ctl")), key=lambda p: int(p.parent.parent.name)) if root.exists() else []
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: str) -> list[str]:
    """initdb refuses to run as root: run the server's commands as the postgres user then."""
    return ["su", "postgres", "-s", "/bin/sh", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]


@contextmanager
def postgres_server():
    """Start a fresh cluster on 127.0.0.1; yields its SQLAlchemy base URL (database ``postgres``)."""
    bindir = _pg_bin()
    if bindir is None:
        msg = "PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
    os.chmod(tmp, 0o777)
    data, port = tmp / "data", _free_port()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
    subprocess.run(_as_postgres(f"'{bindir}/initdb' -D '{data}' -A trust -U postgres >'{tmp}/initdb.log' 2>&1"),
                   check=True)
    subprocess.run(_as_postgres(f"'{bindir}/pg_ctl' -D '{data}' -w -t 60 -l '{tmp}/server.log' "
                                f"-o \"-k '{tmp}' -c listen_addresses=127.0.0.1 -p {port}\" start >/dev/null"),
                   check=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres(f"'{bindir}/pg_ctl' -D '{data}' -m immediate stop >/dev/null 2>&1"))
        shutil.rmtree(tmp, ignore_errors=True)
