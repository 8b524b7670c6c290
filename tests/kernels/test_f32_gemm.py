"""fp32 GEMM kernel: numpy-golden results on the host (AVX2 8-lane and baseline 4-lane), both B layouts,
bias, ragged shapes; the FMA instructions in the x86 / arm64 assembly; the arm64 build run under qemu."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.target import codegen

from banana.compiler.errors import BadConfigError
from banana.kernels.f32_gemm import PACK_MIN_ROWS, F32Tile, default_k_block, f32_gemm_primfunc, row_chunks

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}
BASELINE = {"kind": "llvm", "num-cores": 2}  # x86-64 without AVX: 4 lanes, no FMA
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
# tile-aligned, ragged m/n/k (n not a lane multiple, k not a lane multiple), tiny, GEMV-like, k = 1
SHAPES = [(256, 384, 384), (5, 7, 37), (13, 29, 3), (1, 19, 70), (37, 65, 1), (9, 16, 16)]


def _operands(m: int, n: int, k: int, transpose_b: bool, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if transpose_b else (k, n), dtype=np.float32)
    return a, b, rng.standard_normal(n, dtype=np.float32)


def _reference(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, transpose_b: bool) -> np.ndarray:
    bb = b.astype(np.float64)
    out = a.astype(np.float64) @ (bb.T if transpose_b else bb)
    return out + bias if bias is not None else out


def _tolerance(a: np.ndarray, b: np.ndarray, transpose_b: bool) -> np.ndarray:
    """fp32 dot product bound: (k + 8) roundings of 2^-24 x sum |a*b|."""
    bb = np.abs(b.astype(np.float64))
    mag = np.abs(a.astype(np.float64)) @ (bb.T if transpose_b else bb)
    return (a.shape[1] + 8) * 2.0**-24 * mag + 1e-5


def _run_host(target: dict, m: int, n: int, k: int, transpose_b: bool, bias: bool, **knobs: Any) -> None:
    a, b, bvec = _operands(m, n, k, transpose_b, seed=m * 7 + n)
    tgt = tvm.target.Target(target)
    func = f32_gemm_primfunc(m, n, k, target=tgt, transpose_b=transpose_b, bias=bias, **knobs)
    assert func.attrs["tirx.is_scheduled"]
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tgt)
    c = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32))
    args = [tvm.runtime.tensor(a), tvm.runtime.tensor(b)] + ([tvm.runtime.tensor(bvec)] if bias else []) + [c]
    lib["main"](*args)
    err = np.abs(c.numpy().astype(np.float64) - _reference(a, b, bvec if bias else None, transpose_b))
    assert (err <= _tolerance(a, b, transpose_b)).all(), float(np.nanmax(err))


@pytest.mark.parametrize("transpose_b", [False, True], ids=["kn", "nk"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_host_matches_numpy(shape: tuple[int, int, int], transpose_b: bool) -> None:
    _run_host(HOST, *shape, transpose_b, bias=shape[0] % 2 == 1)  # bias on the odd-m shapes


@pytest.mark.parametrize("transpose_b", [False, True], ids=["kn", "nk"])
def test_baseline_x86_four_lanes(transpose_b: bool) -> None:
    """A bare ``llvm`` target (no AVX/FMA) gets the 4-lane kernel, still correct on ragged shapes."""
    func = f32_gemm_primfunc(5, 7, 37, target=tvm.target.Target(BASELINE), transpose_b=transpose_b)
    assert "'lanes': 4" in str(func.attrs["banana.knobs"])
    _run_host(BASELINE, 5, 7, 37, transpose_b, True)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize(("shape", "k_block"), [((50, 40, 37), 16), ((13, 29, 100), 32), ((64, 48, 96), 48)],
                         ids=["ragged-k-block", "ragged-n", "even"])
def test_k_blocks_accumulate_through_c(shape: tuple[int, int, int], k_block: int, bias: bool) -> None:
    """k split into blocks (the last one short): later blocks continue from C, the bias is added once."""
    _run_host(HOST, *shape, False, bias, k_block=k_block)
    _run_host(HOST, *shape, True, bias, k_block=k_block)  # [n, k] B packed transposed (m >= PACK_MIN_ROWS)


def test_row_chunks_split_few_wide_panels() -> None:
    """A GEMM with one column panel but many rows is split by rows so both cores get work; still exact."""
    assert row_chunks(row_tiles=43, col_tiles=1, macs_per_tile=6 * 16 * 384, cores=2) == 2
    assert row_chunks(row_tiles=43, col_tiles=24, macs_per_tile=6 * 16 * 384, cores=2) == 1
    assert row_chunks(row_tiles=1, col_tiles=1, macs_per_tile=64, cores=2) == 1
    func = f32_gemm_primfunc(200, 16, 384, target=tvm.target.Target(HOST), transpose_b=False)
    assert "'row_chunks': 2" in str(func.attrs["banana.knobs"])
    _run_host(HOST, 200, 16, 384, False, True)
    _run_host(HOST, 203, 13, 70, False, True, tile=F32Tile(4, 1), k_block=32)  # ragged rows, n, k at once


def test_kernel_choice_by_rows() -> None:
    """[n, k] weights: packed into the outer-product kernel when rows amortise the copy, else read in place."""
    tgt = tvm.target.Target(HOST)
    kernel = {m: str(f32_gemm_primfunc(m, 32, 32, target=tgt, transpose_b=True).attrs["banana.kernel"])
              for m in (1, PACK_MIN_ROWS - 1, PACK_MIN_ROWS)}
    assert kernel[1].startswith("f32_gemm.dot") and kernel[PACK_MIN_ROWS - 1].startswith("f32_gemm.dot")
    assert kernel[PACK_MIN_ROWS].startswith("f32_gemm.outer")
    # [k, n] weights are packed only when a task's row tiles repay the copy; both paths are exact (SHAPES)
    knobs = {m: str(f32_gemm_primfunc(m, 32, 32, target=tgt, transpose_b=False).attrs["banana.knobs"])
             for m in (9, 256)}
    assert "'packed': False" in knobs[9] and "'packed': True" in knobs[256]


def test_default_k_block_fits_l1_and_splits_evenly() -> None:
    assert default_k_block(384, 16) == 384
    assert default_k_block(1536, 16) == 384  # 4 even blocks of 24 KB panels
    assert default_k_block(1000, 16) == 334  # 3 blocks, the last one 332
    assert default_k_block(7, 16) == 7


def _asm(target: dict, transpose_b: bool, m: int) -> str:
    func = f32_gemm_primfunc(m, 64, 64, target=tvm.target.Target(target), transpose_b=transpose_b)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(mod, target=tvm.target.Target(target)).inspect_source("asm")


# [k, n] outer product, [n, k] packed into the outer product (m >= PACK_MIN_ROWS), [n, k] dot (GEMV-like m)
KERNELS = pytest.mark.parametrize(("transpose_b", "m"), [(False, 64), (True, 64), (True, 4)],
                                  ids=["kn", "nk", "nk-dot"])


@KERNELS
def test_x86_avx2_uses_ymm_fma(transpose_b: bool, m: int) -> None:
    asm = _asm(AVX2, transpose_b, m)
    assert len(re.findall(r"^\s*vfmadd\d+ps\s+%ymm", asm, flags=re.M)) >= 8


@KERNELS
def test_arm64_uses_fmla_4s(transpose_b: bool, m: int) -> None:
    asm = _asm(ARM, transpose_b, m)
    assert len(re.findall(r"^\s*fmla\s+v\d+\.4s", asm, flags=re.M)) >= 8
    assert not re.search(r"^\s*bl\s+fmaf", asm, flags=re.M)


def test_bad_arguments() -> None:
    with pytest.raises(BadConfigError, match="k="):
        f32_gemm_primfunc(2, 2, 0, target=tvm.target.Target(HOST), transpose_b=False)


@pytest.mark.slow
def test_arm64_matches_numpy_under_qemu(tmp_path: Path) -> None:
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    from banana.targets.arm64 import export_arm64_library, run_arm64

    target = tvm.target.Target(ARM)
    arrays, cases = [], []
    for m, n, k in SHAPES[1:]:
        for transpose_b in (False, True):
            a, b, bvec = _operands(m, n, k, transpose_b, seed=m + k)
            arrays += [a, b, bvec]
            cases.append((m, n, k, transpose_b, a, b, bvec))
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, "float32")) for i, x in enumerate(arrays)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = []
            for idx, (m, n, k, transpose_b, *_) in enumerate(cases):
                gv = bb.add_func(f32_gemm_primfunc(m, n, k, target=target, transpose_b=transpose_b, bias=True),
                                 f"f32_gemm_{idx}")
                outs.append(bb.emit(relax.call_tir(gv, params[3 * idx:3 * idx + 3],
                                                   relax.TensorType((m, n), "float32"))))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    lib = export_arm64_library(tvm.compile(bb.get(), target=target), tmp_path / "f32_gemm.so")
    weights = tmp_path / "empty.params"
    tvm.runtime.save_param_dict_to_file({}, str(weights))
    run = run_arm64(lib, weights, arrays, qemu_cpu="neoverse-n1")
    for out, (_, _, _, transpose_b, a, b, bvec) in zip(run.outputs, cases, strict=True):
        err = np.abs(out.astype(np.float64) - _reference(a, b, bvec, transpose_b))
        assert (err <= _tolerance(a, b, transpose_b)).all()
