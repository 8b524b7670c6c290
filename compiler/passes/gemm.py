"""fp32 ``R.matmul`` -> ``call_tir`` of banana's register-tiled GEMM (:mod:`banana.kernels.f32_gemm`).

Why before legalisation: ``R.matmul`` legalises to a plain loop nest that dlight's CPU rules
(GEMV, reduction) do not schedule, ~60x slower than OpenBLAS on the small DiT; at the Relax level
the operand layout is still visible. Rewritten: fp32 ``matmul(x, w)`` with static shapes, ``x``
``[..., K]`` (leading dims merged into M by a reshape, which lowers to a view) and ``w`` a 2-D
``[K, N]`` tensor, or ``permute_dims(w_t)`` of a 2-D ``[N, K]`` one (the Linear/Gemm layout, read in
place: ``transpose_b``). A following ``add`` of a ``[N]`` bias (the matmul's only use) is the
kernel's epilogue, so a Linear stays one kernel as it was after fusion. Everything else (batched
matmuls, other dtypes, GEMMs below ``min_macs``, where the kernel's fixed per-call cost is not
repaid: ~8 K MACs ran faster on the old path, 64 K already 3x slower) is left to legalisation and the
dlight rules.

Schedule knobs: ``rewrite_f32_gemms(..., knobs=LOOKUP)`` builds each kernel with the register tile and k
block ``LOOKUP`` returns for its shape (None: the kernel's defaults); the lowering's
:func:`f32_gemm_pass` takes the lookup of the active ``--tuning-db`` (knobs stored by ``banana tune``,
:mod:`banana.tuning.gemm_knobs`), so a build without a database is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax

from banana.kernels.f32_gemm import F32Tile, f32_gemm_primfunc

logger = logging.getLogger(__name__)

#: below this many multiply-accumulates the stock lowering is kept (see tests/compiler/passes/test_gemm.py).
#: Low because tiny kernels run serially (passes.small_kernels): then the kernel beats dlight's lowering
#: at every nano-DiT size (8K-32K MACs: 0.4-1.6 us vs 5-120 us) and reads transposed weights in place.
MIN_MACS = 4096

#: ``(m, n, k, transpose_b, bias, kernel name) -> (tile, k_block)`` to build that GEMM with, or None (defaults)
KnobLookup = Callable[[int, int, int, bool, bool, str], "tuple[F32Tile, int] | None"]

_MATMUL = tvm.ir.Op.get("relax.matmul")
_PERMUTE = tvm.ir.Op.get("relax.permute_dims")
_ADD = tvm.ir.Op.get("relax.add")


@dataclass(frozen=True)
class _Plan:
    """One matmul as a kernel call: operands, layout, GEMM sizes, the activation's original shape."""

    x: relax.Expr
    b: relax.Expr
    transpose_b: bool
    m: int
    n: int
    k: int
    x_shape: list[int]


def _static_shape(expr: relax.Expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(getattr(ty, "shape", None), relax.ShapeExpr):
        return None
    dims = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in ty.shape.values]
    return None if any(d is None for d in dims) else dims  # type: ignore[return-value]


def _dtype(expr: relax.Expr) -> str | None:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, min_macs: int,
                 var2val: dict[relax.Var, relax.Expr], uses: dict[relax.Var, int],
                 knobs: KnobLookup | None = None) -> None:
        super().__init__(mod)
        self.target = target
        self.knobs = knobs
        self.min_macs = min_macs
        self.var2val = var2val
        self.uses = uses
        #: matmuls a bias add takes as its kernel's epilogue (emitted there, not here)
        self.absorbed: list[relax.Call] = []
        self.kernels: dict[tuple[int, int, int, bool, bool], Any] = {}
        self.count = 0

    def _weight(self, w: relax.Expr) -> tuple[relax.Expr, bool] | None:
        """(B operand, transpose_b) of a matmul's right-hand side, or None when it is not a 2-D weight."""
        shape = _static_shape(w)
        if shape is None or len(shape) != 2:
            return None
        value = self.var2val.get(w) if isinstance(w, relax.Var) else None
        if isinstance(value, relax.Call) and value.op == _PERMUTE:
            inner = value.args[0]
            axes = value.attrs.axes
            if _static_shape(inner) is not None and len(_static_shape(inner)) == 2 and (
                    axes is None or [int(a) for a in axes] == [1, 0]):
                return inner, True
        return w, False

    def plan(self, call: relax.Call) -> _Plan | None:
        """The kernel call for a qualifying matmul, else None."""
        if call.op != _MATMUL:
            return None
        x, w = call.args
        xs, ws = _static_shape(x), _static_shape(w)
        out_dtype = str(call.attrs.out_dtype) if call.attrs.out_dtype else ""
        if (xs is None or ws is None or len(xs) < 2 or len(ws) != 2 or _dtype(x) != "float32"
                or _dtype(w) != "float32" or out_dtype not in ("", "void", "float32")):
            return None
        weight = self._weight(w)
        if weight is None:
            return None
        k, n = ws
        m = 1
        for d in xs[:-1]:
            m *= d
        if m * n * k < self.min_macs:
            return None
        return _Plan(x, weight[0], weight[1], m, n, k, xs)

    def bias_of(self, call: relax.Call) -> tuple[_Plan, relax.Expr] | None:
        """``add(matmul, bias[n])`` (either order) whose matmul qualifies and has no other use."""
        if call.op != _ADD:
            return None
        for mm, b in (call.args, call.args[::-1]):
            value = self.var2val.get(mm) if isinstance(mm, relax.Var) else None
            if not isinstance(value, relax.Call) or self.uses.get(mm, 0) != 1:
                continue
            plan = self.plan(value)
            if plan is not None and _dtype(b) == "float32" and _static_shape(b) == [plan.n]:
                self.absorbed.append(value)
                return plan, b
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        fused = self.bias_of(call)
        if fused is not None:
            return self._emit(fused[0], fused[1])
        plan = self.plan(call)
        if plan is None or any(call.same_as(c) for c in self.absorbed):
            # absorbed: the bias add emits this matmul; the unused original is removed afterwards
            return super().visit_call_(call)
        return self._emit(plan, None)

    def _emit(self, p: _Plan, bias: relax.Expr | None) -> relax.Expr:
        m, n, k = p.m, p.n, p.k
        key = (m, n, k, p.transpose_b, bias is not None)
        gv = self.kernels.get(key)
        if gv is None:
            name = f"f32_gemm_{m}x{n}x{k}{'_t' if p.transpose_b else ''}{'_bias' if bias is not None else ''}"
            tuned = self.knobs(m, n, k, p.transpose_b, bias is not None, name) if self.knobs else None
            extra: dict[str, Any] = {"tile": tuned[0], "k_block": tuned[1]} if tuned else {}
            func = f32_gemm_primfunc(m, n, k, target=self.target, transpose_b=p.transpose_b, bias=bias is not None,
                                     **extra)
            gv = self.builder_.add_func(func, name)
            self.kernels[key] = gv
        a = self.visit_expr(p.x)
        if len(p.x_shape) != 2:
            a = self.builder_.emit(relax.op.reshape(a, [m, k]))
        args = [a, self.visit_expr(p.b)] + ([self.visit_expr(bias)] if bias is not None else [])
        out = relax.call_tir(gv, args, relax.TensorType([m, n], "float32"))
        self.count += 1
        if len(p.x_shape) != 2:
            out = relax.op.reshape(self.builder_.emit(out), [*p.x_shape[:-1], n])
        return out


def _use_counts(func: relax.Function) -> dict[relax.Var, int]:
    """How often each variable is read in ``func`` (binding values and the function's result)."""
    counts: dict[relax.Var, int] = {}

    def count(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            relax.analysis.post_order_visit(binding.value, count)
    relax.analysis.post_order_visit(body.body, count)
    return counts


def rewrite_f32_gemms(mod: tvm.IRModule, target: tvm.target.Target, *, min_macs: int = MIN_MACS,
                      knobs: KnobLookup | None = None,
                      shapes: list[tuple[int, int, int, bool, bool]] | None = None) -> tvm.IRModule:
    """Every qualifying fp32 matmul of every Relax function in ``mod`` as a call of the GEMM kernel.

    ``knobs``: per-shape schedule knobs (None: defaults). ``shapes``, if given, receives each distinct
    kernel's ``(m, n, k, transpose_b, bias)`` in first-emitted order (what ``banana tune`` searches)."""
    names = [gv for gv, f in mod.functions.items() if isinstance(f, relax.Function)]
    total = 0
    for gv in names:
        func = mod[gv]
        if not isinstance(func.body, relax.SeqExpr):
            continue
        rewriter = _Rewriter(mod, target, min_macs, relax.analysis.get_var2val(func), _use_counts(func), knobs)
        for block in func.body.blocks:  # find the bias adds first: their matmuls are not emitted alone
            for binding in block.bindings:
                if isinstance(binding.value, relax.Call):
                    rewriter.bias_of(binding.value)
        new_func = rewriter.visit_expr(func)
        for key in rewriter.kernels if shapes is not None else ():
            if key not in shapes:  # type: ignore[operator]
                shapes.append(key)  # type: ignore[union-attr]
        if rewriter.count:
            # the permute_dims of a weight read in place is now unused
            rewriter.builder_.update_func(gv, relax.analysis.remove_all_unused(new_func))
            mod = rewriter.builder_.get()
            total += rewriter.count
    if total:
        logger.info("f32 GEMM: %d matmul(s) -> banana.kernels.f32_gemm", total)
    return mod


def f32_gemm_pass(target: tvm.target.Target, *, min_macs: int = MIN_MACS) -> tvm.transform.Pass:
    """:func:`rewrite_f32_gemms` as a module pass for the LLVM CPU pipeline (before legalisation), with the
    knobs of the tuning database active when it runs (``banana compile --tuning-db``; none: defaults)."""

    @tvm.transform.module_pass(opt_level=0, name="banana.f32_gemm")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from banana.tuning.apply import active_gemm_knobs

        return rewrite_f32_gemms(mod, target, min_macs=min_macs, knobs=active_gemm_knobs())

    return _pass
