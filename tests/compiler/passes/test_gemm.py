"""fp32 matmul -> f32 GEMM kernel rewrite: which matmuls it takes (static fp32, 2-D weight in either
layout, >= MIN_MACS) and which it leaves, and the lowered module's result against numpy."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R
from tvm.target import codegen

from banana.compiler.lowering import compile_llvm
from banana.compiler.passes.gemm import MIN_MACS, rewrite_f32_gemms

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}


@tvm.script.ir_module
class Model:
    @R.function
    def main(x: R.Tensor((2, 32, 64), "float32"), w: R.Tensor((64, 48), "float32"),
             wt: R.Tensor((40, 48), "float32"), small: R.Tensor((4, 4), "float32"),
             q: R.Tensor((2, 4, 8, 16), "float32"), kk: R.Tensor((2, 4, 16, 8), "float32"),
             xi: R.Tensor((32, 64), "int32"), wi: R.Tensor((64, 48), "int32"), bw: R.Tensor((48,), "float32"),
             bt: R.Tensor((40,), "float32")):
        with R.dataflow():
            y = R.matmul(x, w)  # [2, 32, 48]: rewritten, [K, N] weight, leading dims merged
            t = R.permute_dims(wt)
            z = R.matmul(y, t)  # [2, 32, 40]: rewritten, [N, K] weight read in place
            s = R.matmul(small, small)  # 64 MACs: below the threshold
            b = R.matmul(q, kk)  # batched: left alone
            i = R.matmul(xi, wi)  # int32: left alone
            y2 = R.matmul(x, w)
            u = R.add(y2, bw)  # bias add of a matmul used only here: the kernel's epilogue
            v = R.add(bt, z)  # z is also an output: the add stays separate
            R.output(z, s, b, i, u, v)
        return (z, s, b, i, u, v)


def _kernels(mod: tvm.IRModule) -> list[str]:
    return sorted(str(f.attrs["banana.kernel"]) for _, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "banana.kernel" in f.attrs)


def test_rewrites_only_qualifying_matmuls() -> None:
    new = rewrite_f32_gemms(Model, tvm.target.Target(HOST))
    lanes = _kernels(new)[0][-1]
    assert _kernels(new) == [f"f32_gemm.outer_x{lanes}"] * 3  # the [n, k] one packed (m = 64 rows)
    knobs = sorted(str(f.attrs["banana.knobs"]) for _, f in new.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert sum("'transpose_b': True" in k for k in knobs) == 1
    names = sorted(gv.name_hint for gv, f in new.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert names == ["f32_gemm_64x40x48_t", "f32_gemm_64x48x64", "f32_gemm_64x48x64_bias"]
    text = new["main"].script()
    assert text.count("R.matmul") == 3  # small, batched, int32
    assert text.count("R.add") == 1  # the bias add was absorbed, the other one kept
    assert "permute_dims" not in text  # the transposed weight is read in place


def test_threshold_is_respected() -> None:
    # first GEMM 64x48x64 = 196608 MACs, second 64x40x48 = 122880: only the first is large enough
    new = rewrite_f32_gemms(Model, tvm.target.Target(HOST), min_macs=150000)
    assert [k[:-1] for k in _kernels(new)] == ["f32_gemm.outer_x", "f32_gemm.outer_x"]
    assert "permute_dims" in new["main"].script()
    assert MIN_MACS > 64


def test_lowered_module_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    shapes = [(2, 32, 64), (64, 48), (40, 48), (4, 4), (2, 4, 8, 16), (2, 4, 16, 8)]
    args = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    args += [rng.integers(-5, 5, (32, 64), dtype=np.int32), rng.integers(-5, 5, (64, 48), dtype=np.int32)]
    args += [rng.standard_normal(48, dtype=np.float32), rng.standard_normal(40, dtype=np.float32)]
    x, w, wt, small, q, kk, xi, wi, bw, bt = args
    vm = relax.VirtualMachine(compile_llvm(Model, HOST, gemm_kernels=True), tvm.cpu())
    z, s, b, i, u, v = (o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args]))
    np.testing.assert_allclose(u, x.astype(np.float64) @ w + bw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(v, z + bt, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z, (x.astype(np.float64) @ w @ wt.T), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(s, small @ small, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, q @ kk, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(i, xi @ wi)
