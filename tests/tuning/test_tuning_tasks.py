"""Tuning task extraction mirrors the LLVM build: the same pre-schedule passes (fast math, and the
fp32 GEMM kernel when the build uses it), so a record's workload is a PrimFunc the build looks up."""

from __future__ import annotations

import pytest
import tvm
import tvm_ffi
from tvm.script import relax as R
from tvm.target import codegen

import banana.compiler.lowering as lowering
from banana.tuning.tasks import extract_tune_tasks, pre_schedule_passes

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}


@tvm.script.ir_module
class Mlp:
    @R.function
    def main(x: R.Tensor((64, 128), "float32"), w: R.Tensor((128, 256), "float32"), b: R.Tensor((256,), "float32")):
        with R.dataflow():
            h = R.add(R.matmul(x, w), b)
            y = R.multiply(h, R.add(R.erf(R.multiply(h, R.const(0.70710678, "float32"))), R.const(1.0, "float32")))
            R.output(y)
        return y


def _prim_funcs(mod: tvm.IRModule) -> list[tvm.tirx.PrimFunc]:
    return [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_tasks_are_the_builds_prim_funcs() -> None:
    target = tvm.target.Target(HOST)
    with target:
        built = tvm.transform.Sequential(lowering.llvm_pre_schedule_passes(target))(Mlp)
    tasks = extract_tune_tasks(Mlp, HOST)
    assert tasks
    for task in tasks:
        assert "T.erf(" not in task.mod.script()  # fast math ran before fusion, as in the build
        assert any(tvm_ffi.structural_equal(task.mod["main"].without_attr("global_symbol"),
                                        f.without_attr("global_symbol")) for f in _prim_funcs(built))


@pytest.mark.parametrize("gemm_kernels", [False, True])
def test_gemm_kernel_follows_the_build_default(monkeypatch: pytest.MonkeyPatch, gemm_kernels: bool) -> None:
    """With the GEMM kernel on, the matmul is banana's (already scheduled) kernel: not a tuning task."""
    original = lowering.llvm_pre_schedule_passes
    monkeypatch.setattr(lowering, "llvm_pre_schedule_passes",
                        lambda target: original(target, gemm_kernels=gemm_kernels))
    names = [str(p.info.name) for p in pre_schedule_passes(tvm.target.Target(HOST))]
    assert ("banana.f32_gemm" in names) == gemm_kernels
    tasks = extract_tune_tasks(Mlp, HOST)
    assert any("matmul" in t.name for t in tasks) != gemm_kernels
