"""The tuning database: MetaSchedule's JSON tables in one directory per SoC and backend.

``DB/<SOC>/<backend>/`` holds ``database_workload.json`` and ``database_tuning_record.json``
(MetaSchedule's append-only JSON-lines tables, keyed by the task's structural hash) and
``db.json`` (our metadata: target and tuning sessions; schema-checked). MetaSchedule appends one
line per committed record, so a killed tuner leaves at most a torn last line: :meth:`open`
trims it, which is what makes ``kill -9`` lose only in-flight trials.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from banana.compiler.errors import BadConfigError

logger = logging.getLogger(__name__)

META = "db.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
# the build's default schedule per task, measured like a trial (banana.tuning.baseline); kept apart so
# the trial tables hold trials only (resume arithmetic, "no finished trial lost")
DEFAULT_WORKLOADS = "default_workload.json"
DEFAULT_RECORDS = "default_tuning_record.json"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "tuning_db.schema.json"


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def _check(meta: dict[str, Any], path: Path) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(meta))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise BadConfigError(f"{path}: field '{where}': {error.message}")


def database_dir(root: Path | str, soc_id: str, backend: str) -> Path:
    return Path(root) / soc_id / backend


def _trim_torn_line(path: Path) -> None:
    """Drop a last line without its newline (the process died mid-append); keep whole lines."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data[: data.rfind(b"\n") + 1]
    logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted tuner",
                   path, len(data) - len(keep))
    path.write_bytes(keep)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".db-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


class TuningDatabase:
    """One SoC/backend's records; ``ms`` is the MetaSchedule ``JSONDatabase`` over the tables."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        from tvm.s_tir import meta_schedule as ms

        self.directory = directory
        self.meta = meta
        self.ms = ms.database.JSONDatabase(str(directory / WORKLOADS), str(directory / RECORDS),
                                           allow_missing=True, module_equality="structural")
        self.defaults = ms.database.JSONDatabase(str(directory / DEFAULT_WORKLOADS),
                                                 str(directory / DEFAULT_RECORDS),
                                                 allow_missing=True, module_equality="structural")

    @classmethod
    def open(cls, root: Path | str, soc_id: str, backend: str, target: dict[str, Any] | None = None,
             *, create: bool = True) -> TuningDatabase:
        """Open (and with ``create``, make) ``root/soc_id/backend``; a new target replaces the old one."""
        directory = database_dir(root, soc_id, backend)
        meta_path = directory / META
        if meta_path.is_file():
            meta = read_meta(meta_path)
            if (meta["soc"], meta["backend"]) != (soc_id, backend):
                raise BadConfigError(f"{meta_path}: holds records for {meta['soc']}/{meta['backend']}, "
                                     f"not {soc_id}/{backend}")
            if target is not None and meta["target"] != target:
                logger.warning("%s: target changed from %s to %s; old records stay usable as seeds",
                               meta_path, meta["target"], target)
                meta["target"] = target
        elif create:
            if target is None:
                raise BadConfigError(f"{meta_path}: a new tuning database needs a target")
            directory.mkdir(parents=True, exist_ok=True)
            meta = {"schema_version": 1, "soc": soc_id, "backend": backend, "target": target,
                    "created_utc": _now(), "sessions": []}
        else:
            raise BadConfigError(f"{meta_path}: no tuning database for SoC {soc_id}, backend {backend}")
        for table in (WORKLOADS, RECORDS, DEFAULT_WORKLOADS, DEFAULT_RECORDS):
            _trim_torn_line(directory / table)
        db = cls(directory, meta)
        if create:
            db.save_meta()
        return db

    def save_meta(self) -> None:
        _check(self.meta, self.directory / META)
        _write_json_atomic(self.directory / META, self.meta)

    def records_for(self, workload_mod: Any) -> list[Any]:
        """Committed (verified) records of one task, best first."""
        if not self.ms.has_workload(workload_mod):
            return []
        return list(self.ms.get_top_k(self.ms.commit_workload(workload_mod), 1 << 30))

    def best_seconds(self, workload_mod: Any) -> float | None:
        records = self.records_for(workload_mod)
        if not records or not records[0].run_secs:
            return None
        secs = [float(s) for s in records[0].run_secs]
        return sum(secs) / len(secs)

    def pruned_memory_copy(self) -> Any:
        """Best record per task in a MemoryDatabase: builds query it without appending to our files."""
        from tvm.s_tir import meta_schedule as ms

        memory = ms.database.MemoryDatabase(module_equality="structural")
        self.ms.dump_pruned(memory)
        self.defaults.dump_pruned(memory)  # a task's default schedule competes with its trials
        return memory


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadConfigError(f"{path}: unreadable tuning database metadata: {exc}") from exc
    _check(meta, path)
    return meta


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
