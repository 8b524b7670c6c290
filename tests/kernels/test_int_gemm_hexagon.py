"""HVX integer GEMM: vrmpy/vdmpy in the hot loop, and bit-exact results under qemu-hexagon vs numpy."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm

from banana.compiler.errors import BadConfigError
from banana.kernels.int_gemm_hexagon import hvx_gemm_layout, hvx_int_gemm_primfunc, hvx_prepack_weights
from banana.targets.hexagon import hexagon_target
from banana.targets.hexagon.asm import hvx_instruction_stats, innermost_loops, mac_share
from banana.targets.hexagon.qemu import build_kernel_object, qemu_available, run_primfunc

TARGET = tvm.target.Target(hexagon_target("v73"))
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="qemu-hexagon, clang-15 or ld.lld missing")


def _pack_int4(w: np.ndarray) -> np.ndarray:
    """Two signed nibbles per byte, low nibble = even k, odd tail nibble 0 (the interface's layout)."""
    n, k = w.shape
    nib = np.zeros((n, 2 * ((k + 1) // 2)), np.uint8)
    nib[:, :k] = w.astype(np.uint8) & 0x0F
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)


def _reference(a: np.ndarray, w: np.ndarray, k_group: int) -> np.ndarray:
    """int32 GEMM accumulation in numpy (int64 sums wrapped to int32, as the hardware wraps)."""
    m, k = a.shape
    g = k // k_group if k_group else 1
    out = np.einsum("mgk,ngk->mng", a.astype(np.int64).reshape(m, g, -1), w.astype(np.int64).reshape(w.shape[0], g, -1))
    out = out.astype(np.int32)
    return out if k_group else out[:, :, 0]


def _case(m: int, n: int, k: int, a_dtype: str, w_bits: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max, size=(m, k), endpoint=True).astype(a_dtype)
    lim = 8 if w_bits == 4 else 128
    w = rng.integers(-lim, lim, size=(n, k)).astype(np.int8)
    return a, w, (_pack_int4(w) if w_bits == 4 else w)


# ---------------------------------------------------------------- layout and pre-pack (no toolchain)


def test_prepack_matches_layout_definition():
    lay = hvx_gemm_layout(5, 40, 18, k_group=6)
    _, w, _ = _case(5, 40, 18, "int8", 8, 0)
    packed = hvx_prepack_weights(w, lay)
    assert packed.shape == lay.packed_shape == (2, 3, 2, 128)
    for jb, g, q, lane in [(0, 0, 0, 0), (0, 2, 1, 127), (1, 1, 0, 4 * 7 + 2), (1, 0, 1, 4 * 31)]:
        j, kk = jb * 32 + lane // 4, q * 4 + lane % 4
        expect = w[j, g * 6 + kk] if j < 40 and kk < 6 else 0
        assert packed[jb, g, q, lane] == expect


def test_prepack_int4_unpacks_signed_nibbles():
    lay = hvx_gemm_layout(1, 3, 5, w_bits=4, a_dtype="int16")
    w = np.array([[-8, 7, -1, 0, 3], [1, -2, 4, -5, 6], [0, 0, 0, 0, -8]], np.int8)
    packed = hvx_prepack_weights(_pack_int4(w), lay)
    assert packed.dtype == np.int16 and packed.shape == (1, 1, 3, 64)
    np.testing.assert_array_equal(packed[0, 0, :, :6].reshape(3, 3, 2).transpose(1, 0, 2).reshape(3, 6)[:, :5], w)


@pytest.mark.parametrize("bad", [dict(a_dtype="int32"), dict(w_bits=2), dict(k_group=5), dict(k_group=-1)])
def test_rejects_bad_config(bad):
    with pytest.raises(BadConfigError):
        hvx_int_gemm_primfunc(4, 32, 16, target=TARGET, **bad)


def test_rejects_non_hexagon_target():
    with pytest.raises(BadConfigError):
        hvx_int_gemm_primfunc(4, 32, 16, target=tvm.target.Target({"kind": "llvm"}))


def test_vdmpy_saturation_range_is_flagged(caplog):
    hvx_int_gemm_primfunc(1, 32, 511, target=TARGET, a_dtype="int16")
    assert "saturates" not in caplog.text
    hvx_int_gemm_primfunc(1, 32, 512, target=TARGET, a_dtype="int16")
    assert "saturates" in caplog.text


def test_primfunc_is_scheduled_and_unnamed():
    f = hvx_int_gemm_primfunc(4, 32, 16, target=TARGET)
    assert f.attrs["tirx.is_scheduled"] and "global_symbol" not in f.attrs
    assert len(f.params) == 3
    head = f.script()
    for decl in ('A: T.Buffer((4, 16), "int8")', 'W: T.Buffer((32, 16), "int8")', 'C: T.Buffer((4, 32), "int32")'):
        assert decl in head


# ---------------------------------------------------------------- assembly


@pytest.mark.parametrize("a_dtype, mnemonic", [("int8", "hvx.vrmpy"),
                                               pytest.param("uint8", "hvx.vrmpy", marks=pytest.mark.slow),
                                               ("int16", "hvx.vdmpy")])
def test_hot_loop_issues_all_macs_through_vrmpy_or_vdmpy(tmp_path, a_dtype, mnemonic):
    f = hvx_int_gemm_primfunc(16, 128, 128, target=TARGET, a_dtype=a_dtype)
    _, asm = build_kernel_object(f, "gemm", TARGET, tmp_path)
    loops = [body for body in innermost_loops(asm) if hvx_instruction_stats(body).get(mnemonic, 0)]
    assert loops, f"no innermost loop with {mnemonic}"
    hot = "\n".join(loops)
    assert mac_share(hot, (mnemonic,))["share"] == 1.0
    stats = hvx_instruction_stats(hot)
    assert stats[mnemonic] >= 8  # the 4x2 register tile is unrolled
    assert "vrmpy" in asm or mnemonic != "hvx.vrmpy"


# ---------------------------------------------------------------- qemu: bit-exact vs numpy

slow = pytest.mark.slow
CASES = [  # m, n, k, a_dtype, w_bits, k_group, prepacked
    (16, 128, 128, "int8", 8, 0, False),  # nano DiT q_proj-like, whole tiles
    (5, 40, 18, "int8", 8, 0, False),  # ragged m, n (tail block) and k (k % 4 != 0): element-wise repack
    (5, 70, 264, "int8", 8, 132, False),  # vshuff-transpose repack, ragged rows, 2 tail words; 2 groups
    pytest.param(3, 33, 7, "uint8", 8, 0, False, marks=slow),
    pytest.param(6, 70, 30, "int8", 4, 0, False, marks=slow),
    (9, 45, 24, "uint8", 4, 6, False),  # k groups of 6 straddle vrmpy's 4-wide lanes; 4 groups interleaved
    pytest.param(4, 40, 36, "int8", 8, 0, True, marks=slow),
    (7, 50, 21, "int16", 8, 0, False),  # vdmpy
    pytest.param(7, 36, 20, "uint16", 4, 10, True, marks=slow),
    pytest.param(4, 70, 64, "int8", 8, 8, False, marks=slow),  # 8 groups interleaved into C's [n, G] rows
    pytest.param(3, 40, 16, "int8", 8, 16, False, marks=slow),  # one group: C [m, n, 1]
    pytest.param(6, 64, 64, "int16", 8, 8, True, marks=slow),
]


def _case_id(case) -> str:
    m, n, k, a_dtype, w_bits, k_group, pre = case.values if hasattr(case, "values") else case
    return f"{m}x{n}x{k}-{a_dtype}-w{w_bits}-g{k_group}{'-pre' if pre else ''}"


@needs_qemu
@pytest.mark.parametrize("m, n, k, a_dtype, w_bits, k_group, prepacked", CASES, ids=[_case_id(c) for c in CASES])
def test_runs_under_qemu_and_matches_numpy(tmp_path, m, n, k, a_dtype, w_bits, k_group, prepacked):
    a, w, w_arg = _case(m, n, k, a_dtype, w_bits, seed=m * n + k)
    lay = hvx_gemm_layout(m, n, k, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    if prepacked:
        w_arg = hvx_prepack_weights(w_arg, lay)
    f = hvx_int_gemm_primfunc(m, n, k, target=TARGET, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group,
                              prepacked=prepacked)
    c0 = np.full(lay.c_shape, 0x5A5A5A5A, np.int32)  # garbage in C: the kernel must overwrite all of it
    (c,) = run_primfunc(f, [a, w_arg, c0], [2], TARGET, work_dir=tmp_path)
    np.testing.assert_array_equal(c, _reference(a, w, k_group))


@needs_qemu
@pytest.mark.parametrize("a_dtype, w_bits, k_group", [("int16", 8, 0), ("uint16", 8, 0), ("uint16", 4, 32)])
def test_common_interface_runs_16bit_activations_on_hvx(tmp_path, a_dtype, w_bits, k_group):
    """int16/uint16 through :func:`banana.kernels.int_gemm.int_gemm_primfunc` (what the integer pass
    calls) on a hexagon target: the vdmpy kernel on the interface's plain W layout, exact vs numpy."""
    from banana.kernels.int_gemm import int_gemm_primfunc

    m, n, k = 5, 40, 64
    a, w, w_arg = _case(m, n, k, a_dtype, w_bits, seed=17 + w_bits)
    f = int_gemm_primfunc(m, n, k, target=TARGET, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    out_shape = (m, n, k // k_group) if k_group else (m, n)
    (c,) = run_primfunc(f, [a, w_arg, np.full(out_shape, 0x5A5A5A5A, np.int32)], [2], TARGET, work_dir=tmp_path)
    np.testing.assert_array_equal(c, _reference(a, w, k_group))


@needs_qemu
@pytest.mark.slow
def test_extreme_values_wrap_like_int32(tmp_path):
    m, n, k = 4, 32, 256
    a = np.full((m, k), -128, np.int8)
    w = np.full((n, k), -128, np.int8)
    w[1] = 127
    (c,) = run_primfunc(hvx_int_gemm_primfunc(m, n, k, target=TARGET), [a, w, np.zeros((m, n), np.int32)], [2],
                        TARGET, work_dir=tmp_path)
    np.testing.assert_array_equal(c, _reference(a, w, 0))
    assert c[0, 0] == 256 * 16384 and c[0, 1] == -256 * 128 * 127


@needs_qemu
def test_dynamic_profile_counts_every_vrmpy(tmp_path):
    """qemu's execution trace: exactly m*n*k/128 vrmpy for a whole-tile shape, and no other MACs."""
    m, n, k = 8, 64, 64
    a, w, _ = _case(m, n, k, "int8", 8, 1)
    lay = hvx_gemm_layout(m, n, k)
    prof: dict[str, float] = {}
    f = hvx_int_gemm_primfunc(m, n, k, target=TARGET, prepacked=True)
    (c,) = run_primfunc(f, [a, hvx_prepack_weights(w, lay), np.zeros((m, n), np.int32)], [2], TARGET,
                        work_dir=tmp_path, profile=prof)
    np.testing.assert_array_equal(c, _reference(a, w, 0))
    assert prof["hvx.vrmpy"] == m * n * k / 128
    assert prof["macs_total"] == prof["macs.hvx.vrmpy"] == m * n * k


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ld.lld") is None, reason="ld.lld not installed")
def test_kernel_builds_inside_a_relax_module(tmp_path, monkeypatch):
    """The way the Relax pass uses it: call_tir of the PrimFunc, built by build_hexagon."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    from tvm import relax
    from tvm.script import relax as R

    from banana.targets.hexagon import build_hexagon

    f = hvx_int_gemm_primfunc(16, 128, 128, target=TARGET)
    bb = relax.BlockBuilder()
    a = relax.Var("a", R.Tensor((16, 128), "int8"))
    w = relax.Var("w", R.Tensor((128, 128), "int8"))
    with bb.function("main", [a, w]):
        gemm = bb.add_func(f, "hvx_gemm")
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.call_tir(gemm, (a, w), R.Tensor((16, 128), "int32"))))
        bb.emit_func_output(out)
    result = build_hexagon(bb.get(), hexagon_target("v73"), tmp_path / "out")
    assert result.hvx_stats.get("hvx.vrmpy", 0) >= 32
    hot = [b for b in innermost_loops(result.asm_path.read_text()) if "vrmpy" in b]
    assert hot and mac_share("\n".join(hot))["share"] == 1.0
