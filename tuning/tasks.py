"""A model's tuning tasks: the fused PrimFuncs the LLVM lowering will compile, deduplicated.

Tasks are extracted after exactly the passes each backend's lowering runs before it consults a
tuning database (LLVM: :func:`banana.compiler.lowering.llvm_pre_schedule_passes`, the list
``llvm_pipeline`` itself runs, so banana's fp32 GEMM kernels and fast-math forms are what gets
tuned, and the GEMM kernels - already scheduled - are skipped below; Hexagon: Relax's CPU
dispatch + legalize/fuse, as in ``targets/hexagon/build.hexagon_pipeline``;
OpenCL: the prefix of ``targets/opencl/lowering.opencl_lowering_passes`` before the dlight GPU
rules), so a record's workload is structurally equal to the PrimFunc the build later looks up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tvm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneTask:
    """One distinct PrimFunc: ``weight`` is how many call sites share it, ``flops`` per call."""

    name: str
    mod: tvm.IRModule
    weight: int
    flops: float

    @property
    def total_flops(self) -> float:
        return self.weight * self.flops


def pre_schedule_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The passes before scheduling (dispatch, legalize, fuse): shared with the backend's lowering."""
    if target.kind.name == "opencl":
        from banana.targets.opencl.lowering import opencl_pre_schedule_passes

        return opencl_pre_schedule_passes()
    if target.kind.name == "llvm":  # banana's pre-legalisation rewrites (fp32 GEMM kernel, fast math) included
        from banana.compiler.lowering import llvm_pre_schedule_passes

        return llvm_pre_schedule_passes(target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)


def extract_tune_tasks(mod: tvm.IRModule, target_json: dict[str, Any]) -> list[TuneTask]:
    """All tasks of a Relax module for a target, largest total FLOPs first (ties by name)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    target = tvm.target.Target(target_json)
    with target:
        fused = tvm.transform.Sequential(pre_schedule_passes(target))(mod)
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(fused, target):
        workload = extracted.dispatched[0]
        if workload["main"].attrs.get("tirx.is_scheduled", False):
            # already scheduled (banana's own kernels): MetaSchedule's design space for them is empty
            # and its search would loop on zero candidates; banana.tuning.knobs searches their knobs
            logger.info("task %s is already scheduled: not tuned", extracted.task_name)
            continue
        try:
            flops = float(estimate_tir_flops(workload))
        except Exception:  # noqa: BLE001 - a few opaque ops have no estimate; they rank last
            flops = 0.0
        tasks.append(TuneTask(extracted.task_name, workload, int(extracted.weight), flops))
    tasks.sort(key=lambda t: (-t.total_flops, t.name))
    logger.info("%d tasks, %.3g FLOPs per run", len(tasks), sum(t.total_flops for t in tasks))
    return tasks


def select_tasks(tasks: list[TuneTask], trials: int, *, coverage: float = 0.95,
                 min_trials_per_task: int = 8) -> list[tuple[TuneTask, int]]:
    """Tasks worth tuning with their trial budgets (deterministic, so a rerun resumes the same plan).

    Take the largest tasks until ``coverage`` of the FLOPs, as many as the budget allows at
    ``min_trials_per_task`` each; split ``trials`` among them in proportion to the square root of
    their FLOPs (big GEMMs need more search, small ones still get a fair try).
    """
    total = sum(t.total_flops for t in tasks)
    if trials <= 0 or total <= 0:
        return []
    chosen: list[TuneTask] = []
    covered = 0.0
    max_tasks = max(1, trials // min_trials_per_task)
    for task in tasks:
        if task.total_flops <= 0 or len(chosen) >= max_tasks or covered >= coverage * total:
            break
        chosen.append(task)
        covered += task.total_flops
    roots = [t.total_flops**0.5 for t in chosen]
    budgets = [int(trials * r / sum(roots)) for r in roots]
    for i in range(trials - sum(budgets)):
        budgets[i % len(budgets)] += 1
    return list(zip(chosen, budgets, strict=True))
