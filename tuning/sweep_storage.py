"""Where a sweep's study lives, and the study-wide lock that makes multi-worker sweeps exact.

Storage is Optuna's RDB interface: ``sqlite:///PATH`` (an embedded file, the default, for workers
on one machine) or ``postgresql://USER[:PASS]@HOST[:PORT]/DB`` (for workers on many machines).
optuna-dashboard opens the same URL.

The lock serialises the few milliseconds in which a worker counts the study's trials, creates a
new one and writes its sampled params: so the study never holds more than ``--trials`` trials and
no two trials get the same configuration, however many workers run where. SQLite (one machine)
uses ``flock`` on a file beside the database; PostgreSQL a session-level advisory lock keyed by
the study name, which the server releases by itself if a worker dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna

from banana.compiler.errors import BadConfigError

logger = logging.getLogger(__name__)

SCHEMES = ("sqlite", "postgresql")
HEARTBEAT_S = 10  # a worker's running trial is marked FAIL once its heartbeat is GRACE_S old
GRACE_S = 60
SCHEMA_ATTEMPTS = 6
# what concurrent CREATE TABLE / version-row inserts of two first-time openers look like
_SCHEMA_RACE = ("duplicate key", "already exists", "UNIQUE constraint failed", "database is locked")


def scheme(url: str) -> str:
    """``sqlite`` | ``postgresql`` (driver suffixes such as ``postgresql+psycopg2`` allowed)."""
    head = url.split("://", 1)[0] if "://" in url else ""
    base = head.split("+", 1)[0]
    if base not in SCHEMES or not url.split("://", 1)[1]:
        raise BadConfigError(f"--storage {redact(url)}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return base


def redact(url: str) -> str:
    """The URL with any password replaced, for logs, errors and pareto.json."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def sqlite_path(url: str) -> Path:
    return Path(url.split("://", 1)[1].removeprefix("/"))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Connect (creating the tables on first use); every failure is a one-line BadConfigError."""
    kind = scheme(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if kind == "sqlite":
        path = sqlite_path(url)
        if not path.parent.is_dir():
            raise BadConfigError(f"--storage {url}: directory {path.parent} does not exist")
        engine_kwargs["connect_args"] = {"timeout": 120}  # workers wait for each other's writes
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except ImportError as e:
            raise BadConfigError(f"--storage {redact(url)}: database driver missing ({e.name}); "
                                 "install banana's dependencies (psycopg[binary])") from None
        except Exception as e:  # sqlalchemy's OperationalError/ArgumentError, optuna's StorageInternalError
            first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
            if attempt + 1 < SCHEMA_ATTEMPTS and any(s in first for s in _SCHEMA_RACE):
                # another machine is creating the tables this very moment: theirs will do
                logger.info("--storage %s: schema created concurrently (%s); retrying", redact(url), first)
                time.sleep(0.5 + random.random())
                continue
            raise BadConfigError(f"--storage {redact(url)}: cannot open: {first}") from None
    raise AssertionError("unreachable")


def _pg_lock_key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"banana-sweep:{study_name}".encode()).digest()[:8], "big", signed=True)


class StudyLock:
    """Study-wide mutual exclusion across processes (SQLite: one machine; PostgreSQL: any)."""

    def __init__(self, url: str, study_name: str) -> None:
        self.kind = scheme(url)
        self.study_name = study_name
        self._file = None
        self._conn = None
        if self.kind == "sqlite":
            self._path = sqlite_path(url).with_name(sqlite_path(url).name + ".lock")
        else:
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self._key = _pg_lock_key(study_name)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.kind == "sqlite":
            with open(self._path, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        import sqlalchemy

        with self._engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})

    def close(self) -> None:
        if self.kind != "sqlite":
            self._engine.dispose()
