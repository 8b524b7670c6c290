"""The build's default schedule is measured and stored as a record, so tuning never makes a task slower."""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi

from banana.tuning.baseline import default_schedule
from tests.conftest import make_mlp_model


def test_default_schedule_equals_the_builds_rules_and_computes_the_same() -> None:
    """The traced default schedule replays dlight + Injective + serial-small exactly as the pipeline does."""
    from tvm import te

    a_t = te.placeholder((64, 256), "float32", name="a")
    b_t = te.compute((64, 256), lambda i, j: te.max(a_t[i, j] + 1.0, 0.0), name="out")
    add_relu = te.create_prim_func([a_t, b_t])
    mod = tvm.IRModule({"main": add_relu})
    from banana.compiler.pipeline import resolve_soc
    from banana.targets.backends import get_backend

    target = tvm.target.Target(get_backend("host").target(resolve_soc(None, "host")))
    sch = default_schedule(mod, target)
    assert len(sch.trace.insts) > 0  # the Injective rule scheduled it (an unscheduled func has no trace)
    replay = tvm.s_tir.Schedule(mod)
    sch.trace.apply_to_schedule(replay, remove_postproc=False)
    assert tvm_ffi.structural_equal(replay.mod, sch.mod)
    lib = tvm.compile(sch.mod, target=target)
    a = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros_like(a))
    lib["main"](tvm.runtime.tensor(a), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(a + 1, 0), rtol=1e-6)


def test_tune_stores_one_default_record_per_task_outside_the_trial_tables(tmp_path) -> None:
    from banana.tuning.database import TuningDatabase
    from banana.tuning.tune import tune_model

    model = make_mlp_model(tmp_path / "m.onnx")
    db_root = tmp_path / "db"
    report = tune_model(model, backend="host", trials=4, db_root=db_root, runner="local")
    tuned = [t for t in report.tasks if t.trials_planned > 0]
    db = TuningDatabase.open(db_root, "host", "host", create=False)
    by_name = {t.name: t.mod for t in _tasks(model)}
    assert tuned
    for task in tuned:
        mod = by_name[task.name]
        assert len(db.records_for(mod)) == task.trials_in_db  # the trial tables hold trials only
        (default,) = db.defaults.get_top_k(db.defaults.commit_workload(mod), 10)
        assert default.run_secs and float(default.run_secs[0]) > 0
    # the build's memory copy offers both: the best of trials and default wins per task
    assert len(db.pruned_memory_copy().get_all_tuning_records()) == 2 * len(tuned)
    again = tune_model(model, backend="host", trials=4, db_root=db_root, runner="local")
    assert again.trials_run == 0  # resumed: nothing re-run, the default not measured twice
    for task in tuned:
        assert len(db.defaults.get_top_k(db.defaults.commit_workload(by_name[task.name]), 10)) == 1


def _tasks(model):
    from banana.compiler.frontend.importer import import_onnx
    from banana.compiler.pipeline import resolve_soc
    from banana.targets.backends import get_backend
    from banana.tuning.tasks import extract_tune_tasks
    from banana.tuning.tune import _fused

    target = get_backend("host").target(resolve_soc(None, "host"))
    mod, _ = _fused(import_onnx(model, None).mod, "host", target)
    return extract_tune_tasks(mod, target)
