"""Row-reduction default CPU schedule: which PrimFuncs it takes (layer/RMS/group norm, softmax with
elementwise epilogues) and declines (reductions over an outer axis, plain reductions, symbolic
shapes), the loops it makes (vector partial sums, vector epilogue, rows parallel), the arm64
(4-lane NEON) variant, and compiled results against numpy float64."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import te, topi
from tvm.s_tir import dlight
from tvm.target import codegen

from banana.compiler.passes.cpu_reduction_schedule import RowReduction

HOST = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2})
ARM64 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2})


def _adaln(rows: int, cols: int) -> tvm.tirx.PrimFunc:
    """DiT adaLN: LN(x) * (1 + scale) + shift, scale/shift broadcast over the rows."""
    x = te.placeholder((1, rows, cols), "float32", name="x")
    gamma = te.placeholder((cols,), "float32", name="gamma")
    beta = te.placeholder((cols,), "float32", name="beta")
    scale = te.placeholder((1, 1, cols), "float32", name="scale")
    shift = te.placeholder((1, 1, cols), "float32", name="shift")
    y = topi.nn.layer_norm(x, gamma, beta, axis=[-1], epsilon=1e-5)
    out = topi.add(topi.multiply(y, topi.add(scale, 1.0)), shift)
    return te.create_prim_func([x, gamma, beta, scale, shift, out])


def _softmax(rows: int, cols: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((rows, cols), "float32", name="x")
    return te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])


def _rms_norm(rows: int, cols: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((rows, cols), "float32", name="x")
    w = te.placeholder((cols,), "float32", name="w")
    return te.create_prim_func([x, w, topi.nn.rms_norm(x, w, axis=[-1], epsilon=1e-6)])


def _group_norm(n: int, c: int, hw: int, groups: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((n, c, hw, hw), "float32", name="x")
    gamma = te.placeholder((c,), "float32", name="gamma")
    beta = te.placeholder((c,), "float32", name="beta")
    return te.create_prim_func([x, gamma, beta, topi.nn.group_norm(x, gamma, beta, groups, 1, [2, 3], 1e-5)])


def _schedule(func: tvm.tirx.PrimFunc, target: tvm.target.Target = HOST) -> tvm.IRModule:
    with target:
        return dlight.ApplyDefaultSchedule(RowReduction())(tvm.IRModule({"main": func}))


def _run(mod: tvm.IRModule, *arrays: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    tvm.compile(mod, target=HOST)["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def _layer_norm64(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def _vector_loops(mod: tvm.IRModule) -> list[int]:
    """The extents of the vectorised loops (lanes), from the printed TIR."""
    return [int(n) for n in re.findall(r"T\.vectorized\((?:T\.int64\()?(\d+)", mod["main"].script())]


@pytest.mark.parametrize("rows,cols", [(256, 384), (5, 64)], ids=["dit", "small"])
def test_adaln_matches_numpy(rows: int, cols: int) -> None:
    mod = _schedule(_adaln(rows, cols))
    text = mod["main"].script()
    assert mod["main"].attrs["tirx.is_scheduled"]
    assert "_rf" in text  # the mean and variance sums are vector partial sums
    assert len(_vector_loops(mod)) >= 5  # 2 x (init, update) + the output
    assert ("T.parallel" in text) == (rows * cols >= 16384)
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((1, rows, cols)) * 3 + 5).astype(np.float32)  # offset: the mean matters
    gamma, beta = (rng.standard_normal(cols).astype(np.float32) for _ in range(2))
    scale, shift = (rng.standard_normal((1, 1, cols)).astype(np.float32) for _ in range(2))
    got = _run(mod, x, gamma, beta, scale, shift, out_shape=(1, rows, cols))
    want = (_layer_norm64(x, (-1,), 1e-5) * gamma + beta) * (1.0 + scale.astype(np.float64)) + shift
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_softmax_and_rms_norm_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * 4).astype(np.float32)
    mod = _schedule(_softmax(64, 256))
    assert "_rf" in mod["main"].script()
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(_run(mod, x, out_shape=x.shape), e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)

    w = rng.standard_normal(256).astype(np.float32)
    mod = _schedule(_rms_norm(64, 256))
    assert "_rf" in mod["main"].script()
    want = x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(_run(mod, x, w, out_shape=x.shape), want, rtol=1e-5, atol=1e-5)


def test_group_norm_left_to_dlight() -> None:
    """TOPI's group norm reduces sum and sum of squares in one two-output block over a reshaped
    view and ends in a reshape back to NCHW: not a row reduction this rule vectorises (yet).
    Declined, it still builds and matches numpy through dlight's rule."""
    n, c, hw, groups = 1, 64, 16, 8
    func = _group_norm(n, c, hw, groups)
    assert RowReduction().apply(func, HOST, False) is None
    with HOST:
        mod = dlight.ApplyDefaultSchedule(RowReduction(), dlight.cpu.Reduction())(tvm.IRModule({"main": func}))
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, c, hw, hw)) + 2).astype(np.float32)
    gamma, beta = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    xg = x.reshape(n, groups, c // groups, hw, hw)
    want = _layer_norm64(xg, (2, 3, 4), 1e-5).reshape(x.shape) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(_run(mod, x, gamma, beta, out_shape=x.shape), want, rtol=1e-4, atol=1e-4)


def test_arm64_uses_neon_lanes() -> None:
    """4 fp32 lanes on 128-bit NEON: 4 vectors of 4 partial sums, and the module compiles."""
    mod = _schedule(_adaln(256, 384), ARM64)
    assert mod["main"].attrs["tirx.is_scheduled"]
    assert set(_vector_loops(mod)) == {4}
    assert re.search(r"x_sum_rf = T\.sblock_alloc_buffer\(\(1, 256, 16\)\)", mod["main"].script())  # 16 per row
    tvm.compile(mod, target=ARM64)  # codegen only: no arm64 runtime here


def test_declines_other_shapes() -> None:
    rule = RowReduction()
    x = te.placeholder((64, 128), "float32", name="x")
    # reduction over the outer axis: the partial sums would gather, not load vectors
    col = topi.divide(x, topi.sum(x, axis=0, keepdims=True))
    assert rule.apply(te.create_prim_func([x, col]), HOST, False) is None
    # plain reduction (no per-element epilogue): dlight's Reduction rule keeps it
    assert rule.apply(te.create_prim_func([x, topi.sum(x, axis=1)]), HOST, False) is None
    # matmul: rows and output share all axes
    w = te.placeholder((128, 32), "float32", name="w")
    assert rule.apply(te.create_prim_func([x, w, topi.nn.relu(topi.matmul(x, w))]), HOST, False) is None
    # an extent no vector divides
    assert rule.apply(_softmax(8, 30), HOST, False) is None
    assert rule.apply(_softmax(64, 64), tvm.target.Target({"kind": "opencl"}), False) is None
