"""Short error contexts for the VM's argument checks: the same checks, ~100 bytes less per argument.

``VMShapeLower`` gives every ``vm.builtin.check_tensor_info`` / ``match_shape`` call a string such
as ``ErrorContext(fn=main, loc=param[14], param=banana_int_0_w, annotation=R.Tensor((128, 16),
dtype="int8"))``. The lean build (:mod:`banana.targets.backends.host`) has the VM check every
weight, so these strings are stored once per parameter in the library: ~30 KB of the int8 nano
DiT's ~210 KB. The annotation repeats what the check's own message already says (the expected
ndim, dtype or dimension next to the one received), so this pass keeps the function, location and
parameter name -- ``main param[14] banana_int_0_w`` -- and drops the rest. A wrong weights file is
still refused naming the parameter. Strings of any other form are left as they are.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax

#: ``VMShapeLower``'s error context of a function parameter (the ones it checks on every call).
_PARAM_CONTEXT = re.compile(r"^ErrorContext\(fn=(?P<fn>[^,]+), loc=(?P<loc>param\[\d+\]), param=(?P<param>[^,]+), "
                            r"annotation=.*\)\s*$", re.DOTALL)
_CHECKS = frozenset({"vm.builtin.check_tensor_info", "vm.builtin.match_shape", "vm.builtin.check_shape_info",
                     "vm.builtin.check_prim_value_info", "vm.builtin.check_tuple_info", "vm.builtin.check_func_info"})


def short_context(text: str) -> str:
    """``fn loc param`` of a parameter's error context; any other string unchanged."""
    match = _PARAM_CONTEXT.match(text)
    if match is None:
        return text
    return f"{match['fn']} {match['loc']} {match['param']}:"


@relax.expr_functor.mutator
class _Shorten(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = call.op
        if not isinstance(op, relax.ExternFunc) or str(op.global_symbol) not in _CHECKS:
            return call
        args = [tvm.ir.StringImm(short_context(a.value)) if isinstance(a, tvm.ir.StringImm) else a for a in call.args]
        return relax.Call(op, args, call.attrs, call.ty_args, call.span, ret_ty=call.ty)


def short_error_context_pass() -> tvm.transform.Pass:
    """Run after ``VMShapeLower``: shortens the error contexts of every Relax function's checks."""

    @tvm.transform.module_pass(opt_level=0, name="banana.short_vm_error_context")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                out.update_func(gvar, _Shorten(out).visit_expr(func))
        return out

    return _pass
