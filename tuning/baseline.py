"""The schedule a build gives a task without records, measured and stored as one more record.

Why: MetaSchedule's search starts from its own design space, not from banana's default rules
(dlight's GEMV/Reduction, banana's ``Injective``, small kernels made serial). On small tasks those
defaults often beat every candidate a short search finds, and a build applies a task's best record
unconditionally -- so without this, tuning could make a model slower (seen: nano DiT 1.15x slower
after 24 trials). Committing the default schedule's trace with its measured time, from the same
builder and runner, lets the database's "best record" be the default when nothing beat it.

Only the LLVM backends (host, cpu) have their default rules here; other backends skip it.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir

logger = logging.getLogger(__name__)

BASELINE_BACKENDS = ("host", "cpu")


def default_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> s_tir.Schedule:
    """What ``compiler.lowering.llvm_pipeline`` does to this PrimFunc without records, as a traced schedule."""
    from banana.compiler.lowering import llvm_default_rules
    from banana.compiler.passes.small_kernels import MAX_SERIAL_WORK, serialized

    func = mod["main"]
    sch = s_tir.Schedule(mod)
    with target:
        for rule in llvm_default_rules():
            space = rule.apply(func, target, False)
            if isinstance(space, s_tir.Schedule):
                sch = s_tir.Schedule(mod)
                # replay on a schedule of the workload itself so the trace refers to its blocks
                space.trace.apply_to_schedule(sch, remove_postproc=False)
                break
    return serialized(sch, MAX_SERIAL_WORK) or sch


def commit_baseline(db: Any, task: Any, target: tvm.target.Target, builder: Any, runner: Any) -> float | None:
    """Measure ``task``'s default schedule with ``builder``/``runner`` and commit it; its mean seconds.

    Stored in the database's own default tables (``TuningDatabase.defaults``), once per task; a
    failure is logged and tuning goes on without a baseline for that task.
    """
    from tvm.s_tir import meta_schedule as ms

    if db.defaults.has_workload(task.mod) and db.defaults.get_top_k(db.defaults.commit_workload(task.mod), 1):
        return None
    try:
        sch = default_schedule(task.mod, target)
        (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
        if built.error_msg:
            raise RuntimeError(built.error_msg.splitlines()[0] if built.error_msg.strip() else "build failed")
        args_info = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
        device_type = "cpu" if target.kind.name == "llvm" else target.kind.name
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, device_type, args_info)])
        result = future.result()
        if result.error_msg or not result.run_secs:
            raise RuntimeError((result.error_msg or "no timing").splitlines()[0])
        workload = db.defaults.commit_workload(task.mod)
        record = ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, args_info)
        db.defaults.commit_tuning_record(record)
    except Exception as exc:  # noqa: BLE001 -- a baseline is an optimisation; tuning must go on without it
        logger.warning("task %s: default schedule not measured (%s); its records compete only with each other",
                       task.name, exc)
        return None
    secs = [float(s) for s in result.run_secs]
    logger.info("task %s: default schedule %.4f ms", task.name, 1e3 * sum(secs) / len(secs))
    return sum(secs) / len(secs)
