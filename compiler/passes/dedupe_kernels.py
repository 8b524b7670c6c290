"""Keep one copy of structurally identical PrimFuncs: every copy is code in the shipped library.

Fusion names kernels after what they compute (``fused_layer_norm_quantize_onnx16``, ...), so two
blocks of a DiT get two identical kernels with different names. Once per-layer numbers (quantize
scales, zero points) are kernel arguments instead of baked-in constants
(:func:`banana.compiler.passes.integer.quantize_params`), those copies are structurally equal and
this pass keeps the first one: every Relax call site is pointed at it and the others are removed.

Equality is :func:`tvm_ffi.structural_equal` of the PrimFuncs without their ``global_symbol``
attribute (the name is not part of what the kernel computes); the structural hash only buckets
candidates. Run it after scheduling (so equal kernels also carry equal schedules) and before
``CallTIRRewrite`` (call sites are still ``call_tir`` with a GlobalVar).
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import relax

logger = logging.getLogger(__name__)


def _comparable(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    if func.attrs is not None and "global_symbol" in func.attrs:
        return func.without_attr("global_symbol")
    return func


def duplicate_kernels(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar]:
    """Each duplicate PrimFunc's GlobalVar -> the GlobalVar of the first equal one (module order)."""
    buckets: dict[int, list[tuple[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]]] = {}
    replace: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar] = {}
    for gvar in sorted(mod.get_global_vars(), key=lambda g: g.name_hint):
        func = mod[gvar]
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        comparable = _comparable(func)
        bucket = buckets.setdefault(tvm_ffi.structural_hash(comparable), [])
        for kept, kept_func in bucket:
            if tvm_ffi.structural_equal(comparable, kept_func):
                replace[gvar] = kept
                break
        else:
            bucket.append((gvar, comparable))
    return replace


@relax.expr_functor.mutator
class _Redirect(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, replace: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar]) -> None:
        super().__init__(mod)
        self.replace = replace

    def visit_global_var_(self, op: tvm.ir.GlobalVar) -> relax.Expr:
        return self.replace.get(op, op)


def dedupe_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with one PrimFunc per structural equivalence class; Relax calls redirected to it."""
    replace = duplicate_kernels(mod)
    if not replace:
        return mod
    out = mod.clone()
    for gvar in replace:
        del out[gvar]
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out.update_func(gvar, _Redirect(out, replace).visit_expr(func))
    logger.info("dedupe_kernels: %d duplicate PrimFuncs removed (%d kept)", len(replace),
                sum(isinstance(f, tvm.tirx.PrimFunc) for f in out.functions.values()))
    return out


def dedupe_kernels_pass() -> tvm.transform.Pass:
    """:func:`dedupe_kernels` as a module pass."""

    @tvm.transform.module_pass(opt_level=0, name="banana.dedupe_kernels")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return dedupe_kernels(mod)

    return _pass
