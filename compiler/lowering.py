"""Relax lowering for LLVM targets (host x86, arm64): one pipeline, target-specific only in data.

TVM's stock CPU pipeline legalises and fuses but schedules nothing; dlight's CPU rules give
reductions and GEMVs a parallel, vectorised schedule without tuning, banana's ``Injective`` rule
(:mod:`banana.compiler.passes.cpu_default_schedule`) the elementwise/broadcast/transpose kernels,
whose erf/exp :mod:`banana.compiler.passes.fast_math` makes vectorisable. With ``gemm_kernels=True``
(the default) fp32 matmuls become banana's register-tiled GEMM kernel before legalisation
(:mod:`banana.compiler.passes.gemm`; dlight has no CPU GEMM rule): ~30x faster on the small DiT;
the report's work model prices it from its TIR (compiler/report/intrinsics.py). Tuning records (the tuning
issue) slot in here, before the rules, so tuned kernels win and the rules cover the rest.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm

logger = logging.getLogger(__name__)


#: whether fp32 matmuls become banana's GEMM kernel by default (build and tuning task extraction alike)
GEMM_KERNELS = True


def llvm_pre_schedule_passes(target: tvm.target.Target, *,
                             gemm_kernels: bool = GEMM_KERNELS) -> list[tvm.transform.Pass]:
    """Dispatch, banana's pre-legalisation rewrites, legalize + fuse: everything before scheduling.
    Shared with ``banana.tuning.tasks`` so a tuning record's workload is the PrimFunc built here."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from banana.compiler.passes.fast_math import fast_math_pass
    from banana.compiler.passes.gemm import f32_gemm_pass

    return (
        cpu_generic.library_dispatch_passes(target)
        + ([f32_gemm_pass(target)] if gemm_kernels else [])  # fp32 matmuls -> scheduled kernel
        + [fast_math_pass()]  # erf/exp/tanh/sigmoid that vectorise (libm calls do not)
        + cpu_generic.legalize_passes(target)
    )


def llvm_default_rules() -> list[Any]:
    """The schedule rules for kernels without a tuning record, in order (the build and the tuner's
    default-schedule records, banana.tuning.baseline, use this one list). RowReduction (before
    dlight's Reduction, which keeps what it declines): layer/RMS norm and softmax rows with vector
    partial sums and a vectorised epilogue. Injective: the elementwise/broadcast/transpose kernels
    the stock CPU rules leave serial."""
    from tvm.s_tir import dlight

    from banana.compiler.passes.cpu_default_schedule import Injective
    from banana.compiler.passes.cpu_reduction_schedule import RowReduction

    return [dlight.cpu.GEMV(), RowReduction(), dlight.cpu.Reduction(), Injective()]


def llvm_pipeline(target: tvm.target.Target, *, gemm_kernels: bool = GEMM_KERNELS) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight

    from banana.compiler.passes.dedupe_kernels import dedupe_kernels_pass
    from banana.compiler.passes.small_kernels import serialize_small_kernels
    from banana.compiler.passes.vm_error_context import short_error_context_pass

    @tvm.transform.module_pass(opt_level=0, name="banana.llvm_pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = (
                llvm_pre_schedule_passes(target, gemm_kernels=gemm_kernels)
                + [_apply_tuning_records(target)]  # tuned tasks first; the rules below skip them
                + [dlight.ApplyDefaultSchedule(*llvm_default_rules())]
                + [serialize_small_kernels()]  # kernels too small to repay a thread-pool fork/join
                + [dedupe_kernels_pass()]  # one copy of structurally equal kernels (library size)
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
                + [short_error_context_pass()]  # after VMShapeLower: ~100 B less per checked parameter
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _apply_tuning_records(target: tvm.target.Target) -> tvm.transform.Pass:
    """Records of the tuning database the pipeline opened (``--tuning-db``); a no-op without one."""

    @tvm.transform.module_pass(opt_level=0, name="banana.apply_tuning_records")
    def _apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from banana.tuning.apply import apply_active_records

        return apply_active_records(mod, target)

    return _apply


def compile_llvm(mod: tvm.IRModule, target_json: dict[str, Any], *,
                 gemm_kernels: bool = GEMM_KERNELS) -> tvm.runtime.Executable:
    """Lower and build a Relax module for an LLVM target (the host or a cross target)."""
    target = tvm.target.Target(target_json)
    lowered = llvm_pipeline(target, gemm_kernels=gemm_kernels)(mod)
    return tvm.compile(lowered, target=target, relax_pipeline=None)
