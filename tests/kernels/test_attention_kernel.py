"""banana.kernels.attention built alone for the host and compared with a numpy reference."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm.s_tir
from tvm import relax

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


def _run(spec: AttentionSpec, knobs: AttentionKnobs | None = None, seed: int = 0,
         wide_vectors: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((spec.batch, spec.q_heads, spec.q_len, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
    v = rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
    mask = None
    if spec.mask_shape is not None:
        mask = (rng.standard_normal(spec.mask_shape) * 2).astype(np.float32)
        mask[..., 0, 1:] = np.finfo(np.float32).min  # a row whose keys are all but one masked off
        if spec.mask_shape[2] > 1:
            mask[..., 1, :] = np.finfo(np.float32).min  # a fully masked row: uniform average, no NaN
    func = attention_primfunc(spec, knobs, wide_vectors=wide_vectors)
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


@pytest.mark.parametrize("wide_vectors", [False, True], ids=["register-tiled", "wide"])
@pytest.mark.parametrize(
    "spec",
    [
        AttentionSpec(1, 8, 2, 256, 256, 48, scale=48**-0.5),  # small-dit self-attention: 5 row blocks + a tail
        AttentionSpec(1, 8, 2, 256, 16, 48, scale=48**-0.5),  # small-dit cross-attention
        AttentionSpec(1, 2, 1, 70, 70, 20, scale=0.2, causal=True, mask_shape=(1, 2, 70, 70)),  # head dim 20: V copied
    ],
    ids=["small-dit-self", "small-dit-cross", "odd-head-dim"],
)
def test_both_kernel_variants_match_numpy(spec: AttentionSpec, wide_vectors: bool) -> None:
    got, want = _run(spec, wide_vectors=wide_vectors, seed=3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_register_tiled_kernel_by_default_wide_one_for_serial_knobs() -> None:
    """The parallel (CPU) kernel's inner loops are 8-lane fmuladd tiles; parallel=False (Hexagon) keeps wide loops."""
    spec = AttentionSpec(1, 8, 2, 64, 64, 16, scale=0.25)
    tiled = attention_primfunc(spec).script()
    wide = attention_primfunc(spec, AttentionKnobs(tile_q=32, tile_kv=64, parallel=False)).script()
    assert "\"float32x8\", \"llvm.fmuladd\"" in tiled and "T.parallel" in tiled
    assert "llvm.fmuladd" not in wide and "T.parallel" not in wide


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


ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}


def _asm(target: dict) -> str:
    func = attention_primfunc(AttentionSpec(1, 8, 2, 64, 64, 48, scale=0.25))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(mod, target=tvm.target.Target(target)).inspect_source("asm")


def test_x86_avx2_inner_loops_are_ymm_fma_without_libm_calls() -> None:
    asm = _asm(AVX2)
    assert len(re.findall(r"^\s*vfmadd\d+ps\s+%ymm", asm, flags=re.M)) >= 24  # two 12-accumulator tiles
    assert re.search(r"^\s*vroundps\s", asm, flags=re.M)  # exp2's nearbyint stays a vector op
    assert not re.search(r"call\w*\s+\w*(exp|round|nearbyint|floor)", asm)


def test_arm64_inner_loops_are_fmla_4s_without_libm_calls() -> None:
    asm = _asm(ARM)
    assert len(re.findall(r"^\s*fmla\s+v\d+\.4s", asm, flags=re.M)) >= 24
    assert not re.search(r"^\s*bl\s+\w*(exp|round|nearbyint|floor|fmaf)", asm, flags=re.M)


@pytest.mark.slow
def test_arm64_matches_numpy_under_qemu(tmp_path: Path) -> None:
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    from banana.targets.arm64 import export_arm64_library, run_arm64

    specs = [
        AttentionSpec(1, 8, 2, 40, 40, 48, scale=48**-0.5),  # small-dit-like GQA, row-block tail
        AttentionSpec(1, 4, 2, 37, 50, 16, scale=0.3, head_map="tile", mask_shape=(1, 4, 37, 50)),  # tails + mask
        AttentionSpec(1, 6, 3, 45, 45, 20, scale=0.5, causal=True),  # causal, head dim 20 (V copied)
    ]
    rng = np.random.default_rng(7)
    target = tvm.target.Target(ARM)
    arrays: list[np.ndarray] = []
    for spec in specs:
        q = rng.standard_normal((spec.batch, spec.q_heads, spec.q_len, spec.head_dim)).astype(np.float32)
        k, v = (rng.standard_normal((spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim)).astype(np.float32)
                for _ in range(2))
        mask = (rng.standard_normal(spec.mask_shape) * 2).astype(np.float32) if spec.mask_shape else \
            np.zeros((1, 1, 1, 1), np.float32)
        arrays += [q, k, v, mask]
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, "float32")) for i, x in enumerate(arrays)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = []
            for idx, spec in enumerate(specs):
                gv = bb.add_func(attention_primfunc(spec).without_attr("global_symbol"), f"attention_{idx}")
                shape = (spec.batch, spec.q_heads, spec.q_len, spec.head_dim)
                outs.append(bb.emit(relax.call_tir(gv, params[4 * idx:4 * idx + 4],
                                                   relax.TensorType(shape, "float32"))))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    lib = export_arm64_library(tvm.compile(bb.get(), target=target), tmp_path / "attention.so")
    weights = tmp_path / "empty.params"
    tvm.runtime.save_param_dict_to_file({}, str(weights))
    run = run_arm64(lib, weights, arrays, qemu_cpu="neoverse-n1")
    for idx, (out, spec) in enumerate(zip(run.outputs, specs, strict=True)):
        q, k, v, mask = arrays[4 * idx:4 * idx + 4]
        want = reference_attention(q, k, v, spec, mask if spec.mask_shape else None)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
