"""One PrimFunc per structurally equal kernel: fewer functions, calls redirected, same results (numpy reference)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from banana.compiler.passes.dedupe_kernels import dedupe_kernels, duplicate_kernels


def _scale_te(x: te.Tensor, s: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda i: x[i] * s[0], name="scale")


def _add_te(x: te.Tensor, s: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda i: x[i] + s[0], name="add")


def _module() -> tvm.IRModule:
    """x * 2 * 3 + 1: two calls of equal kernels (different names, different constant tensors), one other.

    BlockBuilder.add_func merges equal functions itself, so each kernel is added with a distinct
    ``tag`` attribute that is removed afterwards (fusion creates such copies in real modules).
    """
    def prim(fcompute, name: str) -> tvm.tirx.PrimFunc:
        x, s = te.placeholder((8,), "float32", "x"), te.placeholder((1,), "float32", "s")
        return te.create_prim_func([x, s, fcompute(x, s)]).with_attr("global_symbol", name).with_attr("tag", name)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([8], "float32"))
    ty = relax.TensorType([8], "float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y: relax.Expr = x
            for name, fcompute, value in (("scale_a", _scale_te, 2.0), ("scale_b", _scale_te, 3.0),
                                          ("add_c", _add_te, 1.0)):
                gvar = bb.add_func(prim(fcompute, name), name)
                y = bb.emit(relax.call_tir(gvar, [y, relax.const(np.array([value], np.float32))], ty))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            mod[gvar] = func.without_attr("tag")
    return mod


def _prim_names(mod: tvm.IRModule) -> set[str]:
    return {g.name_hint for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_equal_kernels_are_merged_and_calls_redirected() -> None:
    mod = _module()
    assert _prim_names(mod) == {"scale_a", "scale_b", "add_c"}
    assert {g.name_hint: k.name_hint for g, k in duplicate_kernels(mod).items()} == {"scale_b": "scale_a"}
    out = dedupe_kernels(mod)
    assert _prim_names(out) == {"scale_a", "add_c"}
    called = [b.value.args[0].name_hint for block in out["main"].body.blocks for b in block.bindings
              if isinstance(b.value, relax.Call) and b.value.args and isinstance(b.value.args[0], tvm.ir.GlobalVar)]
    assert called == ["scale_a", "scale_a", "add_c"]


def test_deduped_module_computes_the_same() -> None:
    x = np.arange(8, dtype=np.float32) - 3.5
    ex = tvm.compile(dedupe_kernels(_module()), target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, (x.astype(np.float64) * 2 * 3 + 1).astype(np.float32))


def test_global_symbol_is_not_part_of_equality() -> None:
    mod = _module()
    for name in ("scale_a", "scale_b"):
        gvar = mod.get_global_var(name)
        mod[gvar] = mod[gvar].with_attr("global_symbol", f"sym_{name}")
    assert len(duplicate_kernels(mod)) == 1


def test_no_duplicates_leaves_the_module_alone() -> None:
    mod = dedupe_kernels(_module())
    assert dedupe_kernels(mod) is mod
