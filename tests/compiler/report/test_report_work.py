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
    work = analyze_lowered(lower_for_analysis(_module(), host_target()))
    assert len(work.calls) == 1
    kernel = work.kernels[work.calls[0].kernel]
    # matmul: one mul + one add per MAC; bias add: 1 op per output; relu (max): 1 op per output
    assert kernel.flops == 2 * M * N * K + M * N + M * N
    assert kernel.bytes_read == 4 * (M * K + K * N + N)
    assert kernel.bytes_written == 4 * M * N
    assert kernel.precision == "fp32"
    assert work.planned_activation_bytes is not None and work.planned_activation_bytes >= 0


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
