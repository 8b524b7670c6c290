"""A private PostgreSQL server for tests: initdb in a fresh directory, 127.0.0.1 on a free port, one database.

PostgreSQL refuses to run as root, so as root (here and in CI) every server command runs as the
``postgres`` system user (``runuser -u postgres --``) on a data directory it owns; otherwise the
current user runs it. ``initdb`` + start take about a second.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def postgres_bindir() -> Path | None:
    """Debian's versioned bin dir (``/usr/lib/postgresql/N/bin``) or ``initdb`` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_reason() -> str | None:
    bindir = postgres_bindir()
    if bindir is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' system user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "banana") -> Iterator[str]:
    """Yield ``postgresql://postgres@127.0.0.1:PORT/DATABASE``; the server and its files are gone afterwards."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = postgres_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="banana-pg-", dir="/tmp"))
    root.chmod(0o755)  # the postgres user must reach its data dir
    data, log = root / "data", root / "server.log"
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, timeout=120, cwd=root)

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=100", "start")
        started = True
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    except subprocess.CalledProcessError as e:
        text = log.read_text() if log.is_file() else ""
        raise RuntimeError(f"PostgreSQL setup failed: {e.cmd}: {e.stderr}\n{text[-2000:]}") from None
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, cwd=root)
        shutil.rmtree(root, ignore_errors=True)
