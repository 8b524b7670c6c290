"""FP16 GEMM: ``fmla v.8h`` (fp16 accumulation) / ``fmla v.4s`` (fp32) in the arm64 assembly, and
numpy-golden results on the host (the same TIR; LLVM promotes fp16 on x86) and under qemu."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from banana.compiler.errors import BadConfigError
from banana.kernels.fp16_gemm import fp16_gemm_primfunc

ARM_FP16 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+fullfp16"], "num-cores": 2}
HOST = {"kind": "llvm"}
SHAPES = [(16, 128, 128), (5, 7, 13), (1, 9, 64)]


def _operands(m: int, n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float16), rng.standard_normal((n, k)).astype(np.float16))


def _tolerance(a: np.ndarray, w: np.ndarray, accumulate: str) -> np.ndarray:
    """Error bound per output: unit roundoff of the accumulator x sum |a*w| x a few roundings.

    fp16 accumulation: each of the 8 lanes sums k/8 products, then 8 lanes are added, so each
    product passes through at most k/8 + 3 roundings of relative size 2^-11.
    """
    mag = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    k = a.shape[1]
    u = 2.0**-11 if accumulate == "float16" else 2.0**-24
    return (k / 8 + 4) * u * mag + 1e-6


@pytest.mark.parametrize("accumulate", ["float16", "float32"])
def test_arm64_assembly_uses_vector_fmla(accumulate: str) -> None:
    func = fp16_gemm_primfunc(16, 128, 128, target=tvm.target.Target(ARM_FP16), accumulate=accumulate)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    asm = tvm.tirx.build(mod, target=tvm.target.Target(ARM_FP16)).inspect_source("asm")
    h8 = len(re.findall(r"^\s*fmla\s+v\d+\.8h", asm, flags=re.M))
    s4 = len(re.findall(r"^\s*fmla\s+v\d+\.4s", asm, flags=re.M))
    if accumulate == "float16":
        assert h8 >= 16 and s4 == 0, (h8, s4)
        # no fp16 -> fp32 conversion in the fp16-accumulating kernel
        assert not re.search(r"^\s*fcvtl2?\s", asm, flags=re.M)
    else:
        assert s4 >= 32 and h8 == 0, (h8, s4)


@pytest.mark.parametrize("accumulate", ["float16", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_host_matches_numpy(shape: tuple[int, int, int], accumulate: str) -> None:
    m, n, k = shape
    a, w = _operands(m, n, k)
    func = fp16_gemm_primfunc(m, n, k, target=tvm.target.Target(HOST), accumulate=accumulate)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target(HOST))
    c = tvm.runtime.tensor(np.full((m, n), np.nan, accumulate))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(w), c)
    out = c.numpy()
    assert out.dtype == np.dtype(accumulate)
    ref = a.astype(np.float64) @ w.astype(np.float64).T
    err = np.abs(out.astype(np.float64) - ref)
    assert (err <= _tolerance(a, w, accumulate)).all(), float(err.max())


def test_bad_arguments() -> None:
    with pytest.raises(BadConfigError, match="accumulate"):
        fp16_gemm_primfunc(2, 2, 8, target=tvm.target.Target(HOST), accumulate="bfloat16")  # type: ignore[arg-type]
    with pytest.raises(BadConfigError, match="k="):
        fp16_gemm_primfunc(2, 2, 0, target=tvm.target.Target(HOST))


@pytest.mark.slow
def test_arm64_matches_numpy_under_qemu(tmp_path: Path) -> None:
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    from banana.targets.arm64 import export_arm64_library, run_arm64

    target = tvm.target.Target(ARM_FP16)
    arrays, cases = [], []
    for m, n, k in SHAPES:
        for accumulate in ("float16", "float32"):
            a, w = _operands(m, n, k, seed=m + k)
            arrays += [a, w]
            cases.append((m, n, k, accumulate, a, w))
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, "float16")) for i, x in enumerate(arrays)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = []
            for idx, (m, n, k, accumulate, _, _) in enumerate(cases):
                gv = bb.add_func(fp16_gemm_primfunc(m, n, k, target=target, accumulate=accumulate), f"fp16_gemm_{idx}")
                outs.append(bb.emit(relax.call_tir(gv, [params[2 * idx], params[2 * idx + 1]],
                                                   relax.TensorType((m, n), accumulate))))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    lib = export_arm64_library(tvm.compile(bb.get(), target=target), tmp_path / "fp16_gemm.so")
    weights = tmp_path / "empty.params"
    tvm.runtime.save_param_dict_to_file({}, str(weights))
    run = run_arm64(lib, weights, arrays, qemu_cpu="neoverse-n1")
    for out, (_, _, _, accumulate, a, w) in zip(run.outputs, cases, strict=True):
        ref = a.astype(np.float64) @ w.astype(np.float64).T
        assert (np.abs(out.astype(np.float64) - ref) <= _tolerance(a, w, accumulate)).all()
