"""banana.kernels.attention built alone for the host and compared with a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm.s_tir

from banana.kernels.attention import (
    AttentionKnobs,
    AttentionSpec,
    attention_primfunc,
    default_knobs,
    knob_space,
    working_set_bytes,
)
from banana.targets.host import host_target
from tests.kernels.attention_reference import reference_attention


def _run(spec: AttentionSpec, knobs: AttentionKnobs | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((spec.batch, spec.q_heads, spec.q_len, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
    v = rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
    mask = None
    if spec.mask_shape is not None:
        mask = (rng.standard_normal(spec.mask_shape) * 2).astype(np.float32)
        mask[..., 0, 1:] = np.finfo(np.float32).min  # a row whose keys are all but one masked off
    func = attention_primfunc(spec, knobs)
    ex = tvm.compile(tvm.IRModule({"attention": func}), target=tvm.target.Target(host_target()))
    out = np.zeros((spec.batch, spec.q_heads, spec.q_len, spec.head_dim), np.float32)
    mask_arg = mask if mask is not None else np.zeros((1, 1, 1, 1), np.float32)
    args = [tvm.runtime.tensor(a) for a in (q, k, v, mask_arg, out)]
    ex["attention"](*args)
    return args[-1].numpy(), reference_attention(q, k, v, spec, mask)


@pytest.mark.parametrize(
    "spec",
    [
        AttentionSpec(1, 8, 2, 64, 64, 16, scale=0.25),  # GQA, exact tiles
        AttentionSpec(2, 8, 2, 37, 50, 16, scale=0.3, head_map="tile"),  # tails, tile mapping, batch 2
        AttentionSpec(1, 4, 4, 20, 7, 32, scale=1.0, mask_shape=(1, 4, 20, 7)),  # MHA cross-attn + mask
        AttentionSpec(1, 6, 3, 45, 45, 8, scale=0.5, causal=True, mask_shape=(1, 1, 45, 45)),  # causal + mask
        AttentionSpec(2, 4, 1, 9, 30, 16, scale=0.25, mask_shape=(2, 1, 1, 30)),  # key-padding mask, broadcast
    ],
    ids=["gqa", "tails-tile", "cross-mask", "causal", "key-padding"],
)
def test_kernel_matches_numpy(spec: AttentionSpec) -> None:
    got, want = _run(spec)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fp16_variant_accumulates_in_fp32() -> None:
    spec = AttentionSpec(1, 8, 2, 40, 40, 32, scale=32**-0.5, dtype="float16")
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, h, 40, 32)).astype(np.float16) for h in (8, 2, 2))
    func = attention_primfunc(spec)
    ex = tvm.compile(tvm.IRModule({"attention": func}), target=tvm.target.Target(host_target()))
    args = [tvm.runtime.tensor(a) for a in (q, k, v, np.zeros((1, 1, 1, 1), np.float16), np.zeros_like(q))]
    ex["attention"](*args)
    want = reference_attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), spec, None)
    np.testing.assert_allclose(args[-1].numpy().astype(np.float32), want, rtol=5e-3, atol=2e-3)


def test_every_knob_value_gives_the_same_answer() -> None:
    spec = AttentionSpec(1, 4, 2, 33, 70, 16, scale=0.25)
    space = knob_space(spec)
    for tile_q, tile_kv in [(space["tile_q"][0], space["tile_kv"][-1]), (space["tile_q"][-1], space["tile_kv"][0])]:
        got, want = _run(spec, AttentionKnobs(tile_q=tile_q, tile_kv=tile_kv))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_working_memory_does_not_grow_with_sequence_length() -> None:
    short = AttentionSpec(1, 8, 2, 256, 256, 64, scale=0.125)
    long = AttentionSpec(1, 8, 2, 4096, 4096, 64, scale=0.125)
    assert default_knobs(long, 2) == default_knobs(short, 2)
    ws = working_set_bytes(long, default_knobs(long, 2))
    assert ws < 1 << 20 < 4096 * 4096 * 4
    # No buffer in the kernel is as large as one L x L score matrix.
    func = attention_primfunc(long)
    sizes: list[int] = []
    tvm_ffi = pytest.importorskip("tvm_ffi")

    def visit(node):
        if isinstance(node, tvm.s_tir.SBlock):
            for buf in node.alloc_buffers:
                sizes.append(int(np.prod([int(d) for d in buf.shape])))

    tvm_ffi.structural_walk(func.body, [(tvm.s_tir.SBlock, visit)], order="pre")
    assert sizes and max(sizes) * 4 <= ws


def test_bad_specs_and_knobs_are_rejected_with_one_line() -> None:
    from banana.compiler.errors import BadConfigError

    with pytest.raises(BadConfigError, match="not divisible"):
        attention_primfunc(AttentionSpec(1, 6, 4, 8, 8, 16, scale=1.0))
    with pytest.raises(BadConfigError, match="mask_shape"):
        attention_primfunc(AttentionSpec(1, 4, 2, 8, 8, 16, scale=1.0, mask_shape=(1, 3, 8, 8)))
    with pytest.raises(BadConfigError, match="tile_kv"):
        attention_primfunc(AttentionSpec(1, 4, 2, 8, 8, 16, scale=1.0), AttentionKnobs(tile_q=8, tile_kv=12))
