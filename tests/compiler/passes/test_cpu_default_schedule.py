"""Injective default CPU schedule: which PrimFuncs it takes (all-spatial) and leaves (reductions,
already scheduled), the loops it makes (parallel over chunks, vector innermost, serial when small),
and the compiled result against numpy on even and ragged sizes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import te, topi
from tvm.s_tir import dlight
from tvm.target import codegen

from banana.compiler.passes.cpu_default_schedule import MIN_PARALLEL_ELEMENTS, Injective

HOST = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2})


def _gelu_transpose(rows: int, cols: int) -> tvm.tirx.PrimFunc:
    """Three elementwise ops, a broadcast and a transpose: four blocks that inline into one."""
    x = te.placeholder((rows, cols), "float32", name="x")
    b = te.placeholder((cols,), "float32", name="b")
    y = topi.add(x, b)
    z = topi.multiply(y, topi.add(topi.fast_erf(topi.divide(y, 1.4142135)), 1.0))
    return te.create_prim_func([x, b, topi.transpose(z, [1, 0])])


def _schedule(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    with HOST:
        return dlight.ApplyDefaultSchedule(Injective())(tvm.IRModule({"main": func}))


@pytest.mark.parametrize("shape", [(256, 384), (3, 7), (129, 130)], ids=["big", "tiny", "ragged"])
def test_matches_numpy(shape: tuple[int, int]) -> None:
    rows, cols = shape
    mod = _schedule(_gelu_transpose(rows, cols))
    assert mod["main"].attrs["tirx.is_scheduled"]
    text = mod["main"].script()
    assert len(re.findall(r"^\s+with T\.sblock\(", text, flags=re.M)) == 1  # intermediates inlined
    assert ("T.parallel" in text) == (rows * cols >= MIN_PARALLEL_ELEMENTS)
    assert ("T.vectorized" in text) == ((rows * cols) % 8 == 0)
    rng = np.random.default_rng(rows)
    x = rng.standard_normal(shape, dtype=np.float32)
    b = rng.standard_normal(cols, dtype=np.float32)
    out = tvm.runtime.tensor(np.zeros((cols, rows), np.float32))
    tvm.compile(mod, target=HOST)["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(b), out)
    from math import erf

    y = x.astype(np.float64) + b
    np.testing.assert_allclose(out.numpy(), (y * (np.vectorize(erf)(y / 1.4142135) + 1)).T, rtol=1e-5, atol=1e-5)


def test_leaves_reductions_and_scheduled_functions() -> None:
    x = te.placeholder((64, 64), "float32", name="x")
    reduction = te.create_prim_func([x, topi.sum(topi.exp(x), axis=1)])
    assert Injective().apply(reduction, HOST, False) is None
    scheduled = _gelu_transpose(64, 64).with_attr("tirx.is_scheduled", True)
    mod = _schedule(scheduled)
    assert "T.parallel" not in mod["main"].script()  # ApplyDefaultSchedule skips it: untouched


def test_not_for_gpu_targets() -> None:
    assert Injective().apply(_gelu_transpose(64, 64), tvm.target.Target({"kind": "opencl"}), False) is None
