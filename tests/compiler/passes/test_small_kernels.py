"""Small kernels lose their parallel loops, large ones keep them, and the results do not change."""

from __future__ import annotations

import numpy as np
import tvm
from scipy.special import erf
from tvm import relax, s_tir
from tvm.script import tirx as T
from tvm.target import codegen

from banana.compiler.lowering import compile_llvm, llvm_pipeline
from banana.compiler.passes.small_kernels import (
    MAX_SERIAL_WORK,
    estimate_work,
    serialize_small_kernels,
    statement_iterations,
)
from banana.kernels.f32_gemm import f32_gemm_primfunc

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}


def _add_one(rows: int) -> tvm.tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def add_one(a: T.Buffer((rows, 64), "float32"), b: T.Buffer((rows, 64), "float32")):
        for i in T.parallel(rows):
            for j in T.vectorized(64):
                with T.sblock("b"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    b[vi, vj] = a[vi, vj] + T.float32(1)

    return add_one


@T.prim_func(s_tir=True)
def opaque_task(a: T.Buffer((4, 16), "float32"), b: T.Buffer((4, 16), "float32")):
    # the attention kernel's shape: one opaque block per parallel task, plain loops inside
    for task in T.parallel(4):
        with T.sblock("task"):
            T.reads()
            T.writes()
            for j in range(16):
                b[task, j] = a[task, j] * T.float32(2)


@T.prim_func(s_tir=True)
def symbolic(var_a: T.handle, var_b: T.handle):
    n = T.int64()
    a = T.match_buffer(var_a, (n,), "float32")
    b = T.match_buffer(var_b, (n,), "float32")
    for i in T.parallel(n):
        with T.sblock("b"):
            vi = T.axis.remap("S", [i])
            b[vi] = a[vi]


def _run_pass(funcs: dict[str, tvm.tirx.PrimFunc], max_work: int = MAX_SERIAL_WORK) -> tvm.IRModule:
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return serialize_small_kernels(max_work)(mod)


def _parallel(func: tvm.tirx.PrimFunc) -> bool:
    return "T.parallel" in func.script()


def test_small_kernels_become_serial_large_ones_stay_parallel() -> None:
    small, large = _add_one(16), _add_one(1 << 15)  # 1 K and 2 M iterations
    out = _run_pass({"small": small, "large": large, "opaque": opaque_task, "symbolic": symbolic})
    assert not _parallel(out["small"])
    assert not _parallel(out["opaque"])  # the parallel loop above an opaque block is found too
    assert _parallel(out["large"])
    assert _parallel(out["symbolic"])  # work unknown: left alone
    assert "T.vectorized" in out["small"].script()  # only the parallel loop changed


def test_threshold_is_respected() -> None:
    out = _run_pass({"small": _add_one(16)}, max_work=16 * 64)
    assert _parallel(out["small"])  # 1024 iterations is not below 1024
    out = _run_pass({"small": _add_one(16)}, max_work=16 * 64 + 1)
    assert not _parallel(out["small"])


def test_work_estimate_counts_flops_and_iterations() -> None:
    assert estimate_work(s_tir.Schedule(_add_one(16))) == 16 * 64
    assert estimate_work(s_tir.Schedule(opaque_task)) == 64  # FLOPs inside the opaque block
    assert estimate_work(s_tir.Schedule(symbolic)) is None


def test_hand_written_kernels_are_sized_by_their_loops() -> None:
    # banana's GEMM has one opaque block per parallel task and FMAs TVM's FLOP count cannot read:
    # sized by its blocks (24 tasks) the small DiT's big GEMMs ran on one core (106 -> 70 ms)
    target = tvm.target.Target(HOST)
    big = f32_gemm_primfunc(256, 384, 384, target=target, transpose_b=False, bias=True)
    tiny = f32_gemm_primfunc(16, 96, 256, target=target, transpose_b=False, bias=True)
    assert estimate_work(s_tir.Schedule(big)) > MAX_SERIAL_WORK
    assert estimate_work(s_tir.Schedule(tiny)) < MAX_SERIAL_WORK
    out = _run_pass({"big": big, "tiny": tiny})
    assert _parallel(out["big"]) and not _parallel(out["tiny"])


def test_statement_iterations_count_loops_and_branches() -> None:
    assert statement_iterations(opaque_task.body) == 4 * 16
    assert statement_iterations(_add_one(16).body) == 16 * 64
    assert statement_iterations(symbolic.body) is None


def test_serial_kernel_computes_the_same() -> None:
    out = _run_pass({"small": _add_one(16)})
    lib = tvm.compile(out, target=tvm.target.Target(HOST))
    a = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    b = tvm.runtime.tensor(np.zeros_like(a))
    lib["small"](tvm.runtime.tensor(a), b)
    np.testing.assert_array_equal(b.numpy(), a + 1)


def _mlp() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((16, 128), "float32"))
    w = relax.Var("w", relax.TensorType((128, 128), "float32"))
    g = relax.Var("g", relax.TensorType((128,), "float32"))
    with bb.function("main", [x, w, g]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.layer_norm(x, g, g, [1]))
            o = bb.emit_output(relax.op.nn.gelu(relax.op.matmul(h, w)))
        bb.emit_func_output(o)
    return bb.get()


def test_pipeline_runs_a_small_model_serially_and_correctly() -> None:
    mod = _mlp()
    target = tvm.target.Target(HOST)
    lowered = llvm_pipeline(target, gemm_kernels=True)(mod)
    prims = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prims and not any(_parallel(f) for f in prims)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((16, 128), dtype=np.float32), rng.standard_normal((128, 128), dtype=np.float32)
    g = rng.standard_normal(128, dtype=np.float32)
    vm = relax.VirtualMachine(compile_llvm(mod, HOST, gemm_kernels=True), tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (x, w, g))).numpy()
    x64 = x.astype(np.float64)
    h = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * g + g
    y = h @ w
    np.testing.assert_allclose(got, 0.5 * y * (1 + erf(y / np.sqrt(2))), rtol=1e-4, atol=1e-3)
