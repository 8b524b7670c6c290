"""banana.kernels.attention_gpu: OpenCL C from TVM, run on PoCL through banana's launch plan."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from banana.kernels.attention import AttentionSpec
from banana.kernels.attention_gpu import GpuAttentionKnobs, attention_primfunc_gpu
from tests.kernels.attention_reference import reference_attention


def _module(spec: AttentionSpec, knobs: GpuAttentionKnobs | None) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    mask_shape = list(spec.mask_shape) if spec.mask_shape else [1, 1, 1, 1]
    params = [
        relax.Var("q", relax.TensorType([spec.batch, spec.q_heads, spec.q_len, spec.head_dim], "float32")),
        relax.Var("k", relax.TensorType([spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim], "float32")),
        relax.Var("v", relax.TensorType([spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim], "float32")),
        relax.Var("mask", relax.TensorType(mask_shape, "float32")),
    ]
    with bb.function("main", params):
        with bb.dataflow():
            gv = bb.add_func(attention_primfunc_gpu(spec, knobs).with_attr("global_symbol", "attn"), "attn")
            out_ty = relax.TensorType([spec.batch, spec.q_heads, spec.q_len, spec.head_dim], "float32")
            out = bb.emit_output(relax.call_tir(gv, params, out_ty))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(
    "spec,knobs",
    [
        (AttentionSpec(1, 8, 2, 37, 45, 16, scale=0.25, head_map="tile"), None),  # GQA, tails
        (AttentionSpec(2, 4, 4, 9, 30, 8, scale=0.5, mask_shape=(2, 1, 1, 30)), GpuAttentionKnobs(4, 8)),
        (AttentionSpec(1, 6, 3, 21, 21, 8, scale=0.3, causal=True, mask_shape=(1, 6, 21, 21)), None),
    ],
    ids=["gqa-tile-tails", "mha-key-padding", "causal-mask"],
)
def test_gpu_kernel_matches_numpy_on_pocl(spec: AttentionSpec, knobs: GpuAttentionKnobs | None) -> None:
    from banana.targets.opencl import adreno_target, extract_launch_plan, lower_for_opencl, run_on_pocl

    rng = np.random.default_rng(0)
    q = rng.standard_normal((spec.batch, spec.q_heads, spec.q_len, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
    v = rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
    mask = (rng.standard_normal(spec.mask_shape) * 2).astype(np.float32) if spec.mask_shape else None
    target = adreno_target()
    lowered = lower_for_opencl(_module(spec, knobs), target)
    plan = extract_launch_plan(lowered, target)
    assert len(plan.kernels) == 1  # the attention kernel alone: nothing else was generated
    mask_arg = mask if mask is not None else np.zeros((1, 1, 1, 1), np.float32)
    (got,) = run_on_pocl(plan, [q, k, v, mask_arg], [])
    np.testing.assert_allclose(got, reference_attention(q, k, v, spec, mask), rtol=1e-4, atol=1e-5)
