"""Relax -> scheduled GPU PrimFuncs for OpenCL, stopping before VM lowering.

TVM's stock Adreno pipeline schedules only with Reduction/GeneralReduction/Fallback, so every
matmul ends up in the naive Fallback schedule (attention measured 23x slower on PoCL). We run the
same legalize/fuse prefix and then dlight's generic GPU rules with ``Matmul`` and ``GEMV`` first.
The pipeline stops before ``CallTIRRewrite``/memory planning so that ``main`` still reads as a
dataflow program of ``R.call_tir`` and ``R.reshape`` that the launch plan can be read from.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, tirx
from tvm.ir import IRModule
from tvm.s_tir import dlight as dl

from banana.compiler.errors import UnsupportedOpError

from .target import as_tvm_target

log = logging.getLogger(__name__)

#: PrimFunc attribute naming the dlight rule that scheduled it (for reports and tests).
SCHEDULE_RULE_ATTR = "banana.schedule_rule"


def default_gpu_rules() -> list[dl.ScheduleRule]:
    """dlight rules in priority order: the first rule that matches a PrimFunc schedules it."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


@tvm.transform.module_pass(opt_level=0, name="BananaApplyGpuRules")
class ApplyGpuRules:
    """Like ``dl.ApplyDefaultSchedule`` but records which rule won, so reports can say so."""

    def __init__(self, rules: list[dl.ScheduleRule]):
        self.rules = list(rules)

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            target = func.attrs.get("target") or tvm.target.Target.current(allow_none=False)
            for rule in self.rules:
                space = rule.apply(func, target, False)
                if space is None:
                    continue
                sch = space if not isinstance(space, list) else space[0]
                updated[gvar] = (
                    sch.mod["main"]
                    .with_attr("tirx.is_scheduled", True)
                    .with_attr(SCHEDULE_RULE_ATTR, type(rule).__name__)
                )
                break
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def opencl_pre_schedule_passes() -> list[tvm.transform.Pass]:
    """Legalize and fuse: the passes before scheduling, shared with ``banana tune``'s task extraction."""
    return [
        tirx.transform.BindTarget(tvm.target.Target.current(allow_none=False)),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def opencl_lowering_passes(rules: list[dl.ScheduleRule] | None = None) -> list[tvm.transform.Pass]:
    """The pass list of :func:`lower_for_opencl`; must run inside ``with target:``."""
    from banana.tuning.apply import apply_records_pass

    return [
        *opencl_pre_schedule_passes(),
        apply_records_pass(tvm.target.Target.current(allow_none=False)),  # tuned tasks first
        ApplyGpuRules(default_gpu_rules() if rules is None else rules),
        # Reshape PrimFuncs become R.reshape again: views, not kernels.
        relax.transform.RewriteDataflowReshape(),
        relax.transform.DeadCodeElimination(),
    ]


def lower_for_opencl(mod: IRModule, target: dict) -> IRModule:
    """Legalize, fuse and GPU-schedule a Relax module; every PrimFunc left is scheduled."""
    tgt = as_tvm_target(target)
    if "texture" in tgt.keys:
        raise UnsupportedOpError("target: the Adreno texture-memory path emits invalid OpenCL C in TVM 0.27")
    with tgt:
        lowered = tvm.transform.Sequential(opencl_lowering_passes())(mod)
    unscheduled = sorted(
        gv.name_hint
        for gv, func in lowered.functions_items()
        if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func)
    )
    if unscheduled:
        raise UnsupportedOpError(f"no dlight GPU rule scheduled PrimFunc(s): {', '.join(unscheduled)}")
    for gv, func in lowered.functions_items():
        if isinstance(func, tirx.PrimFunc):
            log.debug("%s scheduled by %s", gv.name_hint, func.attrs.get(SCHEDULE_RULE_ATTR, "?"))
    return lowered


def schedule_rules_used(mod: IRModule) -> dict[str, str]:
    """PrimFunc name -> dlight rule class name, for a module from :func:`lower_for_opencl`."""
    return {
        gv.name_hint: str(func.attrs.get(SCHEDULE_RULE_ATTR, "unknown"))
        for gv, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc)
    }
