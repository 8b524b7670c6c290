"""The correctness gate: a deliberately wrong schedule never enters the tuning database."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T

from banana.tuning.check import CandidateChecker, scheduled_module
from banana.tuning.database import TuningDatabase
from banana.tuning.tune import VerifiedCommit, _Session


@T.prim_func(s_tir=True)
def _scale_add(A: T.Buffer((16, 16), "float32"), C: T.Buffer((16, 16), "float32")):
    B = T.sblock_alloc_buffer((16, 16), "float32")
    for i, j in T.grid(16, 16):
        with T.sblock("B"):
            vi, vj = T.axis.remap("SS", [i, j])
            B[vi, vj] = A[vi, vj] * T.float32(3.3)
    for i, j in T.grid(16, 16):
        with T.sblock("C"):
            vi, vj = T.axis.remap("SS", [i, j])
            C[vi, vj] = B[vi, vj] + T.float32(1)


def _workload() -> tvm.IRModule:
    return tvm.IRModule({"main": _scale_add})


def _good_schedule() -> s_tir.Schedule:
    sch = s_tir.Schedule(_workload())
    i, _ = sch.get_loops(sch.get_sblock("C"))
    sch.parallel(i)
    return sch


def _broken_schedule() -> s_tir.Schedule:
    """Truncates the intermediate to int32: a schedule primitive that changes results."""
    sch = s_tir.Schedule(_workload())
    sch.unsafe_set_dtype(sch.get_sblock("B"), 0, "int32")
    return sch


def test_checker_accepts_good_and_rejects_broken_against_numpy() -> None:
    checker = CandidateChecker(seed=3)
    good = checker.check(_workload(), _good_schedule().mod)
    assert good.ok, good.reason
    # the reference itself is the untuned build: it must agree with numpy
    inputs, outputs = checker._reference(_workload())
    np.testing.assert_allclose(outputs[1], inputs[0] * np.float32(3.3) + 1, rtol=1e-6)
    bad = checker.check(_workload(), _broken_schedule().mod)
    assert not bad.ok and "max abs error" in bad.reason


def test_wrong_candidate_is_rejected_logged_and_not_stored(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    from banana.targets.host import host_target
    from banana.tuning.tasks import TuneTask

    db = TuningDatabase.open(tmp_path, "host", "host", host_target())
    task = TuneTask("scale_add", _workload(), 1, 512.0)
    session = _Session(CandidateChecker(), db, [(task, 2)], None)
    session.task, session.workload = task, db.ms.commit_workload(task.mod)
    session.target = tvm.target.Target(host_target())
    args = ms.arg_info.ArgInfo.from_prim_func(_scale_add)
    candidates = [ms.MeasureCandidate(_broken_schedule(), args), ms.MeasureCandidate(_good_schedule(), args)]
    with caplog.at_level(logging.WARNING, logger="banana.tuning.tune"):
        built = [ms.builder.BuilderResult("unused.tar", None) for _ in candidates]
        ran = [ms.runner.RunnerResult([1e-6], None), ms.runner.RunnerResult([2e-6], None)]
        VerifiedCommit(session).apply(ms.TaskScheduler.create("round-robin"), 0, candidates, built, ran)
    assert session.rejected == 1 and session.run == 1
    assert any("rejected a wrong candidate" in r.getMessage() for r in caplog.records)
    reopened = TuningDatabase.open(tmp_path, "host", "host", create=False)
    records = reopened.records_for(_workload())
    assert len(records) == 1
    # the stored trace replays to the good schedule (parallel loop), not the truncating one
    assert "unsafe_set_dtype" not in str(records[0].trace)
    assert CandidateChecker().check_record(records[0]).ok
    assert scheduled_module(_workload(), records[0].trace) is not None
