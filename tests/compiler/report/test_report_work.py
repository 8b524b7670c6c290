"""FLOPs and bytes counted on lowered TIR match the analytic formulas (2MNK, buffer sizes)."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from banana.compiler.report.work import analyze_lowered, lower_for_analysis
from banana.targets.host import host_target

M, K, N = 8, 32, 16


def _module() -> tvm.IRModule:
    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((M, K), "float32"), w: R.Tensor((K, N), "float32"), b: R.Tensor((N,), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                z = R.add(y, b)
                out = R.nn.relu(z)
                R.output(out)
            return out

    return Mod


def test_fused_matmul_flops_and_bytes_are_analytic() -> None:
    # the stock lowering fuses matmul + bias + relu into one kernel (banana's GEMM kernel would take the matmul)
    work = analyze_lowered(lower_for_analysis(_module(), host_target(), gemm_kernels=False))
    assert len(work.calls) == 1
    kernel = work.kernels[work.calls[0].kernel]
    # matmul: one mul + one add per MAC; bias add: 1 op per output; relu (max): 1 op per output
    assert kernel.flops == 2 * M * N * K + M * N + M * N
    assert kernel.bytes_read == 4 * (M * K + K * N + N)
    assert kernel.bytes_written == 4 * M * N
    assert kernel.precision == "fp32"
    assert work.planned_activation_bytes is not None and work.planned_activation_bytes >= 0


def test_gemm_kernel_path_counts_the_same_work() -> None:
    """banana's GEMM kernel (explicit FMA intrinsics, bias in the kernel) + a relu kernel: the executed work.

    The kernel's register tile is 6 rows: M = 8 runs two tiles (12 rows, the padded rows' results are
    not stored), so executed FLOPs lie between the analytic count and 1.5x its matmul part."""
    work = analyze_lowered(lower_for_analysis(_module(), host_target(), gemm_kernels=True))
    assert any(k.startswith("f32_gemm") for k in work.kernels)
    analytic = 2 * M * N * K + M * N + M * N
    assert analytic <= work.total_flops <= analytic + M * N * K  # FMA lanes counted, no multiply counted twice


def test_counts_scale_with_shape() -> None:
    """Doubling K doubles the matmul work: the count follows loop extents, not a table."""
    x = relax.Var("x", relax.TensorType((4, 64), "float32"))
    w = relax.Var("w", relax.TensorType((64, 8), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    work = analyze_lowered(lower_for_analysis(bb.get(), host_target()))
    assert work.total_flops == pytest.approx(2 * 4 * 8 * 64)
    assert work.total_bytes == 4 * (4 * 64 + 64 * 8 + 4 * 8)
    np.testing.assert_equal(len(work.kernels), 1)


# --- hand-written SIMD kernels and branches (the TIR banana's GEMM kernels are written in) ---

from tvm.script import tirx as T  # noqa: E402

from banana.compiler.report.roofline import predict_kernel  # noqa: E402
from banana.compiler.report.work import analyze_primfunc  # noqa: E402


def test_branches_count_only_the_iterations_that_take_them() -> None:
    """A full 16-wide tile and a ragged last tile guarded per element: 100 elements, one op each."""

    @T.prim_func(s_tir=True)
    def tiles(A: T.Buffer((100,), "float32"), B: T.Buffer((100,), "float32")):
        for t in range(7):
            if t * 16 + 16 <= 100:
                for q in range(16):
                    B[t * 16 + q] = A[t * 16 + q] * T.float32(2)
            else:
                for q in range(16):
                    if t * 16 + q < 100:
                        B[t * 16 + q] = A[t * 16 + q] + T.float32(1)

    work = analyze_primfunc("tiles", tiles)
    assert work.flops == 100
    assert sum(work.stores_by_class.values()) == 100


def test_explicit_fma_and_dot_intrinsics_count_their_multiply_accumulates() -> None:
    """llvm.fmuladd on float32x8: 8 MACs = 16 ops; AVX2 pmaddwd on int16x16 (+ the accumulator add):
    16 MACs = 32 ops (Intel's instruction definitions); both are hand-written SIMD, not scalar code."""

    @T.prim_func(s_tir=True)
    def fma(A: T.Buffer((64,), "float32"), B: T.Buffer((64,), "float32"), C: T.Buffer((64,), "float32")):
        for i in range(8):
            C[T.ramp(i * 8, 1, 8)] = T.call_llvm_pure_intrin("float32x8", "llvm.fmuladd.v8f32", A[T.ramp(i * 8, 1, 8)],
                                                             B[T.ramp(i * 8, 1, 8)], C[T.ramp(i * 8, 1, 8)])

    @T.prim_func(s_tir=True)
    def pmadd(A: T.Buffer((64,), "int16"), B: T.Buffer((64,), "int16"), C: T.Buffer((32,), "int32")):
        for i in range(4):
            C[T.ramp(i * 8, 1, 8)] = C[T.ramp(i * 8, 1, 8)] + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd", A[T.ramp(i * 16, 1, 16)], B[T.ramp(i * 16, 1, 16)])

    f = analyze_primfunc("fma", fma)
    assert f.flops == 2 * 64 and f.ops_by_class == {"ser_simd_ew": 2 * 64}
    assert f.vector_instrs["store.float32x8"] == 8 and sum(v for k, v in f.vector_instrs.items()
                                                           if k.startswith("load.")) == 3 * 8
    p = analyze_primfunc("pmadd", pmadd)
    assert p.flops == 2 * 64 and p.ops_by_class == {"ser_simd_ew": 2 * 64}


def test_f32_gemm_kernel_work_is_2mnk() -> None:
    """banana's register-tiled fp32 GEMM on tile-aligned shapes executes exactly m*n*k FMAs."""
    from banana.kernels.f32_gemm import F32Tile, f32_gemm_primfunc

    m, n, k = 16, 32, 64
    func = f32_gemm_primfunc(m, n, k, target=host_target(), transpose_b=False, tile=F32Tile(4, 2))
    work = analyze_primfunc("gemm", func)
    assert work.flops == 2 * m * n * k
    assert set(work.ops_by_class) <= {"par_simd_ew", "ser_simd_ew", "par_scalar_ew", "ser_scalar_ew"}
    assert sum(v for key, v in work.ops_by_class.items() if "_simd_" in key) == 2 * m * n * k


def test_a_vectorised_gather_moves_like_scalar_code() -> None:
    """A vectorised transpose reads one element per lane: classed scalar; a contiguous copy stays vector."""

    @T.prim_func(s_tir=True)
    def transpose(A: T.Buffer((64, 64), "float32"), B: T.Buffer((64, 64), "float32")):
        for i in range(64):
            for j in T.vectorized(64):
                B[i, j] = A[j, i]

    @T.prim_func(s_tir=True)
    def copy(A: T.Buffer((64, 64), "float32"), B: T.Buffer((64, 64), "float32")):
        for i in range(64):
            for j in T.vectorized(64):
                B[i, j] = A[i, j]

    assert analyze_primfunc("t", transpose).moves_by_class == {"ser_scalar_ew": 64 * 64}
    assert analyze_primfunc("c", copy).moves_by_class == {"ser_vec_ew": 64 * 64}


def test_simd_work_is_timed_by_the_simd_efficiency() -> None:
    import dataclasses

    from banana.compiler.report.machine import Constant, machine_for
    from banana.targets.host import host_soc

    work = analyze_primfunc("g", _gemm_for_pricing())
    base = machine_for(host_soc(), "host")
    times = []
    for eff in (0.5, 1.0):
        constants = {**base.constants, "simd_efficiency": Constant(eff, eff, eff, "", "")}
        machine = dataclasses.replace(base, constants=constants, dram_bytes_per_s=1e15)
        times.append(predict_kernel(work, machine).predicted_s)
    simd_ops = sum(v for key, v in work.ops_by_class.items() if "_simd_" in key)
    # halving the efficiency adds the SIMD ops' time at efficiency 1 (DRAM made free: compute sets the time)
    share = base.peak_share(work.parallel)
    assert times[0] - times[1] == pytest.approx(simd_ops / (base.peak("fp32").value * share), rel=1e-6)


def _gemm_for_pricing() -> tvm.tirx.PrimFunc:
    from banana.kernels.f32_gemm import F32Tile, f32_gemm_primfunc

    return f32_gemm_primfunc(64, 64, 256, target=host_target(), transpose_b=False, tile=F32Tile(4, 2))
