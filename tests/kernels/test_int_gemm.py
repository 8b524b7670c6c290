"""Integer GEMM kernels on the host: int4 packing, dispatch, and numpy-golden results of the x86
(AVX2 / SSE2) and generic schedules for int8/uint8/int16/uint16 A, 8/4-bit W, k groups and ragged
shapes; the int32 overflow limit of long sums."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import tvm

from banana.compiler.errors import BadConfigError, UnsupportedOpError
from banana.kernels.int_gemm import generic_int_gemm, int_gemm_primfunc, max_exact_k, pack_int4, unpack_int4
from banana.targets.host import host_target

# (m, n, k, a_dtype, w_bits, k_group): tile-aligned, ragged in every axis, GEMV, groups, odd k
CASES = [
    (16, 128, 128, "int8", 8, 0),
    (5, 7, 37, "uint8", 8, 0),
    (1, 33, 64, "int8", 8, 0),
    (6, 9, 40, "int8", 4, 20),
    (3, 11, 33, "uint8", 4, 0),
    (7, 10, 64, "uint8", 8, 16),
]
# 16-bit activations: the same shape classes (the uint16 path adds a column-sum correction)
CASES16 = [
    (16, 128, 128, "int16", 8, 0),
    (16, 128, 256, "uint16", 8, 0),
    (5, 7, 37, "uint16", 8, 0),
    (1, 33, 64, "int16", 8, 0),
    (6, 9, 40, "int16", 4, 20),
    (3, 11, 33, "uint16", 4, 0),
    (7, 10, 64, "uint16", 8, 16),
    (9, 3, 13, "int16", 8, 0),
]


def reference(a: np.ndarray, w: np.ndarray, k_group: int) -> np.ndarray:
    """numpy int64 GEMM (per k group when k_group > 0), independent of the kernel module."""
    m, k = a.shape
    groups = 1 if k_group == 0 else k // k_group
    out = np.einsum("mgk,ngk->mng", a.astype(np.int64).reshape(m, groups, -1),
                    w.astype(np.int64).reshape(w.shape[0], groups, -1))
    return (out[..., 0] if k_group == 0 else out).astype(np.int32)


def nibbles(w: np.ndarray) -> np.ndarray:
    """The interface's int4 layout written out by hand: low nibble = even k, high = odd k."""
    n, k = w.shape
    out = np.zeros((n, (k + 1) // 2), np.uint8)
    for j in range(n):
        for kk in range(k):
            out[j, kk // 2] |= (int(w[j, kk]) & 0xF) << (4 * (kk % 2))
    return out


def random_operands(rng: np.random.Generator, m: int, n: int, k: int, a_dtype: str,
                    w_bits: int) -> tuple[np.ndarray, np.ndarray]:
    info = np.iinfo(a_dtype)
    a = rng.integers(int(info.min), int(info.max) + 1, (m, k)).astype(a_dtype)
    wmax = 8 if w_bits == 4 else 128
    w = rng.integers(-wmax, wmax, (n, k)).astype(np.int8)
    return a, w


def run_host(func: tvm.tirx.PrimFunc, target: tvm.target.Target, a: np.ndarray, w_param: np.ndarray,
             c_shape: tuple[int, ...]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    c = tvm.runtime.tensor(np.full(c_shape, -7, np.int32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(w_param), c)
    return c.numpy()


# ---------------------------------------------------------------- int4 packing


def test_pack_int4_layout_and_roundtrip() -> None:
    rng = np.random.default_rng(1)
    for k in (1, 6, 7):
        w = rng.integers(-8, 8, (3, k)).astype(np.int8)
        packed = pack_int4(w)
        assert packed.dtype == np.uint8 and packed.shape == (3, (k + 1) // 2)
        np.testing.assert_array_equal(packed, nibbles(w))
        np.testing.assert_array_equal(unpack_int4(packed, k), w)
    assert pack_int4(np.array([[-8, 7, -1]], np.int8)).tolist() == [[0x78, 0x0F]]


def test_pack_int4_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([[8]], np.int8))
    with pytest.raises(ValueError, match="2-D"):
        pack_int4(np.zeros((2, 2, 2), np.int8))


# ---------------------------------------------------------------- interface and dispatch


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"a_dtype": "int32"}, "a_dtype"), ({"a_dtype": "float16"}, "a_dtype"), ({"w_bits": 2}, "w_bits"),
     ({"k_group": 5}, "k_group"), ({"k_group": -1}, "k_group")],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(BadConfigError, match=match):
        int_gemm_primfunc(4, 4, 32, target=tvm.target.Target({"kind": "llvm"}), **kwargs)


def test_max_exact_k_is_the_worst_case_int32_bound() -> None:
    """Hand-computed floor((2**31 - 1) / (max|a| * max|w|)): int16 x int8 = 2**15 * 2**7 per product."""
    assert max_exact_k("int16", 8) == 511  # 512 * 2**22 == 2**31 overflows
    assert max_exact_k("uint16", 8) == 256  # 256 * 65535 * 128 = 2147450880 < 2**31 - 1 < 257 * ...
    assert max_exact_k("int16", 4) == 8191 and max_exact_k("uint16", 4) == 4096
    assert max_exact_k("int8", 8) == 131071 and max_exact_k("uint8", 8) == 65793
    # the layer's true sum (a - zp) * w: an int16 zero point of 1000 widens |a - zp| to 33768
    assert max_exact_k("int16", 8, zero_point=1000) == (2**31 - 1) // (33768 * 128)
    assert max_exact_k("uint16", 8, zero_point=32768) == 256  # the kernel's own |a| <= 65535 still binds


def test_overflowing_k_is_rejected() -> None:
    target = tvm.target.Target({"kind": "llvm"})
    with pytest.raises(BadConfigError, match="overflow"):
        int_gemm_primfunc(2, 2, 512, target=target, a_dtype="int16")
    with pytest.raises(BadConfigError, match="overflow"):
        int_gemm_primfunc(2, 2, 514, target=target, a_dtype="uint16", k_group=257)
    int_gemm_primfunc(2, 2, 1024, target=target, a_dtype="int16", k_group=256)  # groups keep sums short
    int_gemm_primfunc(2, 2, 4096, target=target, a_dtype="uint16", w_bits=4)


@pytest.mark.parametrize(
    ("target", "a_dtype", "kernel"),
    [
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, "int16", "int_gemm.arm_smlal"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm"]}, "uint16",
         "int_gemm.arm_smlal"),
        ({"kind": "llvm", "mcpu": "znver3"}, "int16", "int_gemm.x86_avx2_pmaddwd"),
        ({"kind": "llvm"}, "uint16", "int_gemm.x86_sse2_pmaddwd"),
        ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "int16", "int_gemm.generic"),
    ],
)
def test_dispatch_16bit_activations(target: dict, a_dtype: str, kernel: str) -> None:
    func = int_gemm_primfunc(8, 8, 32, target=tvm.target.Target(target), a_dtype=a_dtype)
    assert str(func.attrs["banana.kernel"]) == kernel
    assert str(func.params[0].dtype) == a_dtype  # params are buffers in 0.27


@pytest.mark.parametrize(
    ("target", "kernel"),
    [
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}, "int_gemm.arm_dotprod"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm"]},
         "int_gemm.arm_i8mm"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, "int_gemm.generic"),
        ({"kind": "llvm", "mcpu": "znver3"}, "int_gemm.x86_avx2_pmaddwd"),
        ({"kind": "llvm"}, "int_gemm.x86_sse2_pmaddwd"),
        ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "int_gemm.generic"),
    ],
)
def test_dispatch_by_target(target: dict, kernel: str) -> None:
    func = int_gemm_primfunc(8, 8, 32, target=tvm.target.Target(target))
    assert str(func.attrs["banana.kernel"]) == kernel
    assert bool(func.attrs["tirx.is_scheduled"])
    assert "global_symbol" not in func.attrs
    assert [str(p.name) for p in func.params] == ["A", "W", "C"]


HEXAGON = {"kind": "hexagon", "mtriple": "hexagon", "mcpu": "hexagonv73", "mattr": ["+hvxv73", "+hvx-length128b"]}


def test_hexagon_delegates_to_hvx_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("banana.kernels.int_gemm_hexagon")
    sentinel = generic_int_gemm(2, 2, 4)

    def hvx_int_gemm_primfunc(m: int, n: int, k: int, **kw: object) -> tvm.tirx.PrimFunc:
        calls.append((m, n, k, kw))
        return sentinel

    fake.hvx_int_gemm_primfunc = hvx_int_gemm_primfunc  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "banana.kernels.int_gemm_hexagon", fake)
    target = tvm.target.Target(HEXAGON)
    out = int_gemm_primfunc(3, 5, 64, target=target, a_dtype="uint8", w_bits=4, k_group=32)
    assert out.same_as(sentinel)
    (m, n, k, kw), = calls
    assert (m, n, k) == (3, 5, 64)
    assert kw["a_dtype"] == "uint8" and kw["w_bits"] == 4 and kw["k_group"] == 32
    assert kw["target"].kind.name == "hexagon"
    int_gemm_primfunc(3, 5, 64, target=target, a_dtype="int16", w_bits=8, k_group=0)  # 16-bit: same entry
    assert calls[-1][3]["a_dtype"] == "int16"


def test_hexagon_without_hvx_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "banana.kernels.int_gemm_hexagon", None)  # import raises ImportError
    with pytest.raises(UnsupportedOpError, match="int_gemm_hexagon"):
        int_gemm_primfunc(3, 5, 64, target=tvm.target.Target(HEXAGON))


# ---------------------------------------------------------------- numpy-golden results on the host


@pytest.fixture(scope="module")
def avx2_target() -> tvm.target.Target:
    target = tvm.target.Target(host_target())
    from banana.kernels.int_gemm_x86 import has_avx2

    if not has_avx2(target):
        pytest.skip("host CPU has no AVX2")
    return target


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_x86_avx2_matches_numpy(case: tuple, avx2_target: tvm.target.Target) -> None:
    m, n, k, a_dtype, w_bits, k_group = case
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a, w = random_operands(rng, m, n, k, a_dtype, w_bits)
    func = int_gemm_primfunc(m, n, k, target=avx2_target, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    assert "avx2" in str(func.attrs["banana.kernel"])
    ref = reference(a, w, k_group)
    out = run_host(func, avx2_target, a, nibbles(w) if w_bits == 4 else w, ref.shape)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=lambda c: "x".join(map(str, c)))
def test_x86_sse2_and_generic_match_numpy(case: tuple) -> None:
    m, n, k, a_dtype, w_bits, k_group = case
    rng = np.random.default_rng(7)
    a, w = random_operands(rng, m, n, k, a_dtype, w_bits)
    ref = reference(a, w, k_group)
    baseline = tvm.target.Target({"kind": "llvm"})  # x86-64 baseline: SSE2 only
    sse2 = int_gemm_primfunc(m, n, k, target=baseline, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    generic = generic_int_gemm(m, n, k, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    for func in (sse2, generic):
        out = run_host(func, baseline, a, nibbles(w) if w_bits == 4 else w, ref.shape)
        np.testing.assert_array_equal(out, ref, err_msg=str(func.attrs["banana.kernel"]))


@pytest.mark.parametrize("case", CASES16, ids=lambda c: "x".join(map(str, c)))
def test_16bit_activations_match_numpy(case: tuple, avx2_target: tvm.target.Target) -> None:
    """int16/uint16 A on AVX2 vpmaddwd, SSE2 pmaddwd and the generic schedule, bit-exact vs numpy."""
    m, n, k, a_dtype, w_bits, k_group = case
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    a, w = random_operands(rng, m, n, k, a_dtype, w_bits)
    ref = reference(a, w, k_group)
    w_param = nibbles(w) if w_bits == 4 else w
    baseline = tvm.target.Target({"kind": "llvm"})
    funcs = [(int_gemm_primfunc(m, n, k, target=avx2_target, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group),
              avx2_target),
             (int_gemm_primfunc(m, n, k, target=baseline, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group), baseline),
             (generic_int_gemm(m, n, k, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group), baseline)]
    for func, target in funcs:
        out = run_host(func, target, a, w_param, ref.shape)
        np.testing.assert_array_equal(out, ref, err_msg=str(func.attrs["banana.kernel"]))


def test_16bit_extremes_at_the_k_limit(avx2_target: tvm.target.Target) -> None:
    """Every product at its extreme over the longest allowed k: -32768 * -128 * 511 = 2**31 - 2**22 and
    65535 * -128 * 256 land next to the int32 limits; one wrong sign or a saturation shows."""
    m, n = 3, 5
    for a_dtype, a_val, k in (("int16", -32768, 511), ("int16", 32767, 511), ("uint16", 65535, 256),
                              ("uint16", 0, 256)):
        a = np.full((m, k), a_val, a_dtype)
        a[1, ::2] = np.iinfo(a_dtype).min if a_val else np.iinfo(a_dtype).max
        w = np.full((n, k), -128, np.int8)
        w[1] = 127
        w[3, ::3] = 0
        ref = reference(a, w, 0)
        assert np.abs(a.astype(np.int64) @ w.astype(np.int64).T).max() >= 2**29  # the test is near the limit
        for target in (avx2_target, tvm.target.Target({"kind": "llvm"})):
            func = int_gemm_primfunc(m, n, k, target=target, a_dtype=a_dtype)
            out = run_host(func, target, a, w, (m, n))
            np.testing.assert_array_equal(out, ref, err_msg=f"{a_dtype} {a_val} {func.attrs['banana.kernel']}")


def test_extreme_values_are_exact(avx2_target: tvm.target.Target) -> None:
    """-128 * -128 and 255 * -128 over a long k: no int16 saturation or sign slip anywhere."""
    m, n, k = 3, 5, 1000
    for a_dtype, a_val in (("int8", -128), ("uint8", 255)):
        a = np.full((m, k), a_val, a_dtype)
        w = np.full((n, k), -128, np.int8)
        w[1] = 127
        func = int_gemm_primfunc(m, n, k, target=avx2_target, a_dtype=a_dtype)
        out = run_host(func, avx2_target, a, w, (m, n))
        np.testing.assert_array_equal(out, reference(a, w, 0))
    w4 = np.full((n, k), -8, np.int8)
    w4[2] = 7
    a = np.full((m, k), 255, np.uint8)
    func = int_gemm_primfunc(m, n, k, target=avx2_target, a_dtype="uint8", w_bits=4, k_group=250)
    np.testing.assert_array_equal(run_host(func, avx2_target, a, nibbles(w4), (m, n, 4)), reference(a, w4, 250))
