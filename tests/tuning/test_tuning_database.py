"""Tuning database layout, metadata schema and recovery from a torn append."""

from __future__ import annotations

import json

import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T

from banana.compiler.errors import BadConfigError
from banana.tuning.database import META, RECORDS, TuningDatabase, database_dir, read_meta


@T.prim_func(s_tir=True)
def _copy(A: T.Buffer((8,), "float32"), B: T.Buffer((8,), "float32")):
    for i in range(8):
        with T.sblock("B"):
            vi = T.axis.remap("S", [i])
            B[vi] = A[vi]


def _commit(db: TuningDatabase, secs: float) -> None:
    from tvm import s_tir

    mod = tvm.IRModule({"main": _copy})
    sch = s_tir.Schedule(mod)
    sch.parallel(sch.get_loops(sch.get_sblock("B"))[0])  # (records with an empty trace are never returned)
    workload = db.ms.commit_workload(mod)
    target = tvm.target.Target({"kind": "llvm"})
    db.ms.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [secs], target,
                                                        ms.arg_info.ArgInfo.from_prim_func(_copy)))


def test_keyed_by_soc_and_backend_and_schema_checked(tmp_path) -> None:
    db = TuningDatabase.open(tmp_path, "SM8650", "cpu", {"kind": "llvm"})
    assert db.directory == database_dir(tmp_path, "SM8650", "cpu") == tmp_path / "SM8650" / "cpu"
    meta = read_meta(db.directory / META)
    assert (meta["soc"], meta["backend"]) == ("SM8650", "cpu")
    meta["schema_version"] = 7
    (db.directory / META).write_text(json.dumps(meta))
    with pytest.raises(BadConfigError, match="schema_version"):
        TuningDatabase.open(tmp_path, "SM8650", "cpu")


def test_torn_last_record_is_dropped_and_whole_records_kept(tmp_path) -> None:
    db = TuningDatabase.open(tmp_path, "host", "host", {"kind": "llvm"})
    _commit(db, 2e-6)
    _commit(db, 1e-6)
    path = db.directory / RECORDS
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    path.write_bytes(b"".join(lines) + lines[0][: len(lines[0]) // 2])  # a kill -9 mid-append
    reopened = TuningDatabase.open(tmp_path, "host", "host", create=False)
    records = reopened.records_for(tvm.IRModule({"main": _copy}))
    assert [float(r.run_secs[0]) for r in records] == [1e-6, 2e-6]


def test_missing_database_for_compile_is_a_config_error(tmp_path) -> None:
    with pytest.raises(BadConfigError, match="no tuning database"):
        TuningDatabase.open(tmp_path, "host", "cpu", create=False)
