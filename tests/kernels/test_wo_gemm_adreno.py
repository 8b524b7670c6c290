"""banana.kernels.wo_gemm_adreno: weight-only INT8/INT4 GEMM in OpenCL C, run on PoCL vs numpy.

PoCL here has no cl_khr_fp16, so the numbers are checked on the float32-activation variant (same
schedule, float32 scales and accumulators); the fp16 variant's OpenCL C is inspected and compiled by
clang as OpenCL C 1.2 with cl_khr_fp16.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm import relax

from banana.compiler.errors import BadConfigError
from banana.kernels.int_gemm import pack_int4
from banana.kernels.wo_gemm_adreno import WoGemmKnobs, vector_bytes, weight_only_gemm_primfunc
from banana.targets.opencl import adreno_target, extract_launch_plan, lower_for_opencl, run_on_pocl
from banana.targets.opencl.plan import LaunchPlan


def _target() -> tvm.target.Target:
    return tvm.target.Target(adreno_target())


def _plan(m: int, n: int, k: int, w_bits: int, group: int, act: str = "float32", **kw) -> LaunchPlan:
    """The kernel inside a one-call Relax main, lowered and read out as banana's launch plan."""
    scale_dtype = kw.pop("scale_dtype", "float32" if act == "float32" else "float16")
    func = weight_only_gemm_primfunc(m, n, k, target=_target(), w_bits=w_bits, group=group, act_dtype=act,
                                     scale_dtype=scale_dtype, **kw)
    w_shape = [n, k] if w_bits == 8 else [n, (k + 1) // 2]
    params = [
        relax.Var("A", relax.TensorType([m, k], act)),
        relax.Var("W", relax.TensorType(w_shape, "int8" if w_bits == 8 else "uint8")),
        relax.Var("S", relax.TensorType([n] if group == 0 else [n, k // group], scale_dtype)),
    ]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            gv = bb.add_func(func.with_attr("global_symbol", "wo_gemm"), "wo_gemm")
            out = bb.emit_output(relax.call_tir(gv, params, relax.TensorType([m, n], act)))
        bb.emit_func_output(out)
    target = adreno_target()
    return extract_launch_plan(lower_for_opencl(bb.get(), target), target)


def _operands(m: int, n: int, k: int, w_bits: int, group: int, seed: int = 0):
    """A, integer weights in range, fp16-representable positive scales (as a quantizer emits)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    lo, hi = (-128, 127) if w_bits == 8 else (-8, 7)
    wi = rng.integers(lo, hi, size=(n, k), endpoint=True).astype(np.int8)
    s = (rng.random([n] if group == 0 else [n, k // group]) * 0.02 + 1e-3).astype(np.float16)
    return a, wi, s


def _reference(a: np.ndarray, wi: np.ndarray, s: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 GEMM with the dequantised weights, and a rounding bound per output (fp32 accumulators:
    each of <= 4 lanes sums k/4 products, then the lanes are added)."""
    k = a.shape[1]
    s64 = s.astype(np.float64)
    w = wi.astype(np.float64) * (s64[:, None] if group == 0 else np.repeat(s64, group, axis=1))
    ref = a.astype(np.float64) @ w.T
    bound = (k / 4 + 8) * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(w).T) + 1e-12
    return ref, bound


CASES = [
    # m, n, k, w_bits, group, knobs
    (16, 128, 128, 8, 0, None),  # the nano DiT's q/k/v/o shape
    (16, 128, 128, 4, 32, None),
    (16, 256, 128, 4, 0, None),
    (16, 32, 128, 8, 32, None),
    (5, 37, 45, 8, 0, None),  # ragged everything, odd k: scalar (1-byte) weight loads
    (5, 37, 45, 4, 0, None),  # odd k: the last byte's high nibble is padding
    (7, 33, 90, 8, 18, WoGemmKnobs(rows_per_thread=4, cols_per_thread=2, threads_n=8, threads_m=2, k_tile=32)),
    (40, 70, 200, 4, 8, WoGemmKnobs(rows_per_thread=4, cols_per_thread=2, threads_n=16, threads_m=4, k_tile=48)),
]


@pytest.mark.parametrize(
    "m,n,k,w_bits,group,knobs", CASES,
    ids=["16x128x128-i8", "16x128x128-i4-g32", "16x256x128-i4", "16x32x128-i8-g32", "5x37x45-i8-odd-k",
         "5x37x45-i4-odd-k", "7x33x90-i8-g18-tiles", "40x70x200-i4-g8-tiles"],
)
def test_pocl_matches_numpy(m: int, n: int, k: int, w_bits: int, group: int, knobs: WoGemmKnobs | None) -> None:
    a, wi, s = _operands(m, n, k, w_bits, group)
    plan = _plan(m, n, k, w_bits, group, knobs=knobs)
    assert len(plan.kernels) == 1 and len(plan.steps) == 1  # the GEMM alone: no dequantise kernel
    w = wi if w_bits == 8 else pack_int4(wi)
    (got,) = run_on_pocl(plan, [a, w, s.astype(np.float32)], [])
    ref, bound = _reference(a, wi, s, group)
    assert got.shape == (m, n) and got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max err {err.max():.3g}, worst excess {(err - bound).max():.3g}"


def test_wrong_nibble_order_would_be_caught() -> None:
    """The int4 case can fail: swapping the nibbles of every byte changes the result far beyond the bound."""
    m, n, k, group = 4, 32, 64, 0
    a, wi, s = _operands(m, n, k, 4, group, seed=3)
    packed = pack_int4(wi)
    swapped = ((packed << 4) | (packed >> 4)).astype(np.uint8)
    (got,) = run_on_pocl(_plan(m, n, k, 4, group), [a, swapped, s.astype(np.float32)], [])
    ref, bound = _reference(a, wi, s, group)
    assert np.any(np.abs(got - ref) > 100 * bound)


def _source(w_bits: int, group: int, accumulate: str | None = None) -> str:
    return _plan(16, 128, 128, w_bits, group, act="float16", accumulate=accumulate).source


def _global_params(src: str) -> dict[str, str]:
    """kernel parameter name -> OpenCL element type, for every __global pointer."""
    sig = re.search(r"__kernel void \w+\(([^)]*)\)\s*\{", src)
    assert sig, src[:400]
    return {name: ty for ty, name in re.findall(r"__global (\w+)\* restrict (\w+)", sig.group(1))}


@pytest.mark.parametrize("w_bits,group", [(8, 0), (8, 32), (4, 0), (4, 32)])
def test_opencl_c_dequantises_weights_in_registers(w_bits: int, group: int) -> None:
    src = _source(w_bits, group)
    params = _global_params(src)
    # weights arrive as 8-bit integers; the only float buffers are A, the scales and C
    assert params == {"A_ptr": "half", "C_ptr": "half", "S_ptr": "half", "W_ptr": "char" if w_bits == 8 else "uchar"}
    # vector loads of the packed bytes straight into a private register array
    assert re.search(r"vstore4\(vload4\(0, W_ptr \+ [^;]*\), 0, wq_ptr \+ 0\);", src), src
    wq_type, wq_bytes = ("char", 8) if w_bits == 8 else ("uchar", 4)  # one step: 8 k of int8, 8 nibbles of int4
    assert re.search(rf"^\s*{wq_type} wq_ptr\[{wq_bytes}\];", src, flags=re.M)
    # converted (int4: sign-extended by >> 4 on char lanes first) and scaled in private memory
    assert re.search(r"^\s*half wv_ptr\[\d+\];", src, flags=re.M)
    assert src.count("convert_half4(") >= (1 if w_bits == 8 else 2)
    if w_bits == 4:
        assert "(char4 *)" in src and ">> ((char4)((char)4" in src
    # the only global memory written is C: no dequantised weights leave the registers
    stores = set(re.findall(r"\b(\w+_ptr)\[[^\]]*\]\s*=(?!=)", src))
    stores |= set(re.findall(r"vstore\d+\([^;]*, (\w+_ptr) \+", src))
    assert {p for p in stores if p in params} == {"C_ptr"}, stores
    # local memory holds A's tile only (tile_m x k_tile halves), never a weight tile
    assert re.findall(r"__local (\w+) (\w+)\[(\d+)\];", src) == [("half", "a_sh_ptr", str(16 * 64))]
    # fp16 accumulators
    assert re.search(r"^\s*half accs_ptr\[\d+\];", src, flags=re.M)


def test_fp32_accumulation_option() -> None:
    src = _source(4, 32, accumulate="float32")
    assert re.search(r"^\s*float accs_ptr\[\d+\];", src, flags=re.M)
    assert "convert_float4(" in src and _global_params(src)["C_ptr"] == "half"


@pytest.mark.skipif(shutil.which("clang-15") is None, reason="needs clang-15 for an OpenCL C syntax check")
@pytest.mark.parametrize("w_bits,group", [(8, 32), (4, 0)])
def test_fp16_variant_is_valid_opencl_c(w_bits: int, group: int, tmp_path) -> None:
    """PoCL cannot build half code, so clang checks the fp16 kernel as OpenCL C 1.2 + cl_khr_fp16."""
    path = tmp_path / "wo_gemm.cl"
    path.write_text(_source(w_bits, group))
    cmd = ["clang-15", "-x", "cl", "-cl-std=CL1.2", "-Xclang", "-finclude-default-header", "--target=spir64",
           "-Xclang", "-cl-ext=+cl_khr_fp16", "-fsyntax-only", "-Werror=implicit-function-declaration", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "k,w_bits,group,expected",
    [(128, 8, 0, 4), (45, 8, 0, 1), (90, 8, 18, 2), (128, 4, 32, 4), (45, 4, 0, 1), (200, 4, 8, 4), (12, 4, 4, 2)],
)
def test_vector_width_divides_rows_and_groups(k: int, w_bits: int, group: int, expected: int) -> None:
    assert vector_bytes(k, w_bits, group) == expected


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"w_bits": 3}, "w_bits"),
        ({"group": 48}, "divisor of k"),
        ({"w_bits": 4, "group": 1}, "even group"),
        ({"act_dtype": "bfloat16"}, "act_dtype"),
        ({"act_dtype": "float32", "accumulate": "float16"}, "float16 accumulation"),
        ({"scale_dtype": "float32"}, "scale_dtype"),
        ({"knobs": WoGemmKnobs(threads_n=64, threads_m=8)}, "exceed"),
        ({"knobs": WoGemmKnobs(k_tile=12)}, "k_tile"),
        ({"target": tvm.target.Target({"kind": "llvm"})}, "opencl"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    args = {"target": _target(), **kwargs}
    with pytest.raises(BadConfigError, match=message):
        weight_only_gemm_primfunc(16, 128, 128, **args)
