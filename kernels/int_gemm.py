"""Integer GEMM accumulation kernels (int8/uint8/int16/uint16 activations x int8/int4 weights -> int32).

Why a kernel of our own: Relax's ``R.matmul`` on int8 compiles to scalar code, and the QDQ
legaliser turns quantized layers back into float math. The quantized-layer pass (issue 5) calls
:func:`int_gemm_primfunc` for the integer core of every Conv/MatMul/Gemm and adds the requantising
epilogue itself; this module only produces exact int32 sums, per target:

- arm64 ``+i8mm``: ``smmla``/``usmmla`` (2x8 by 8x2 tiles; 1-row GEMMs use sdot), arm64
  ``+dotprod``: ``sdot``/``udot``; int16/uint16 activations on any arm64: ``smlal``/``smlal2``
  (:mod:`banana.kernels.int_gemm_arm`);
- x86: ``vpmaddwd`` (AVX2) / ``pmaddwd`` (SSE2) on operands widened to int16; int16 activations
  are native operands (:mod:`banana.kernels.int_gemm_x86`);
- hexagon: delegated to :mod:`banana.kernels.int_gemm_hexagon` (HVX ``vrmpy``; ``vdmpy`` for 16-bit);
- anything else: the generic schedule below (parallel rows, k innermost, LLVM vectorises).

The SIMD variants share one register-tiled template (:mod:`banana.kernels.int_gemm_dot`); design
notes and measurements are in ``kernels/NOTES_int_gemm.md``.

Interface (fixed; the pass builds on it), params ``(A, W, C)``::

    C[i, j]    = sum_k int32(A[i, k]) * int32(W[j, k])                          k_group == 0, C [m, n]
    C[i, j, g] = same sum over k in [g * k_group, (g + 1) * k_group)            k_group > 0, C [m, n, k // k_group]

``A`` is ``a_dtype`` (int8, uint8, int16 or uint16) ``[m, k]``; ``W`` is int8 ``[n, k]`` (``w_bits == 8``) or uint8
``[n, (k + 1) // 2]`` (``w_bits == 4``) holding two signed nibbles per byte, low nibble = even k
(see :func:`pack_int4`). Per-group sums (``k_group > 0``) serve group-wise weight scales.

Overflow: sums are int32. In the worst case (every product at its extreme) a sum of ``k_group or k``
terms can leave int32 beyond :func:`max_exact_k`: 511 for int16 x int8 (|a*w| <= 2**15 * 2**7),
256 for uint16 x int8, 8x more with int4 weights, >= 65793 for 8-bit activations.
:func:`check_args` rejects longer sums; the quantized-layer matcher checks first and names the layer.

uint16 activations: the quantized-layer pass never asks for them. It re-biases uint16 codes to int16
(``a - 32768``) in the elementwise step before the kernel and folds ``32768 * sum_k w`` into its
per-channel zero-point constants at compile time (``integer_reference.GEMM_REBIAS``), so layers run
the int16 kernel. ``a_dtype="uint16"`` stays supported for direct callers (kernel tests, benchmarks):
the SIMD template then flips on load and adds ``32768 * colsum(W)`` from a run-time pass over W.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np
import tvm
from tvm import te

logger = logging.getLogger(__name__)

A_DTYPES = ("int8", "uint8", "int16", "uint16")
W_BITS = (4, 8)
#: largest |code| of each activation dtype
_A_MAX = {"int8": 2**7, "uint8": 2**8 - 1, "int16": 2**15, "uint16": 2**16 - 1}
_INT32_MAX = 2**31 - 1


def max_exact_k(a_dtype: str, w_bits: int, zero_point: int | None = None) -> int:
    """Longest sum (``k_group or k``) that cannot overflow int32 whatever the codes are.

    Worst case ``k * max|a| * max|w| <= 2**31 - 1`` with ``max|w|`` 128 (int8) or 8 (int4). With a
    ``zero_point``, the layer's true value ``sum (a - zp) * w`` (what the accumulator plus the
    zero-point correction must hold) is bounded too: ``max|a - zp|`` is then also limiting. Why a
    worst-case bound and not a measured one: activations are data, and a wrapped sum is silent.
    """
    a_max = _A_MAX[a_dtype]
    if zero_point is not None:
        lo, hi = (0, a_max) if a_dtype.startswith("u") else (-a_max, a_max - 1)
        a_max = max(a_max, abs(hi - zero_point), abs(zero_point - lo))
    w_max = 2**7 if w_bits == 8 else 2**3
    return _INT32_MAX // (a_max * w_max)


def pack_int4(w: np.ndarray) -> np.ndarray:
    """Pack int8 values in [-8, 7], shape [n, k], two per byte: uint8 [n, (k + 1) // 2].

    Low nibble holds the even k, high nibble the odd k, both two's complement; an odd k leaves
    the last high nibble 0 (it multiplies nothing: the kernel never reads past k).
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack_int4 expects a 2-D [n, k] array, got shape {w.shape}")
    if w.size and (w.min() < -8 or w.max() > 7):
        raise ValueError(f"pack_int4: values must lie in [-8, 7], got [{w.min()}, {w.max()}]")
    n, k = w.shape
    nib = (w.astype(np.int16) & 0xF).astype(np.uint8)
    if k % 2:
        nib = np.concatenate([nib, np.zeros((n, 1), np.uint8)], axis=1)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: int8 [n, k] (numpy reference for tests and the pass)."""
    p = np.asarray(packed, dtype=np.uint8)
    lo = (p & 0xF).astype(np.int8)
    hi = (p >> 4).astype(np.int8)
    both = np.stack([lo, hi], axis=-1).reshape(p.shape[0], -1)[:, :k]
    return np.where(both >= 8, both - 16, both).astype(np.int8)


def check_args(m: int, n: int, k: int, a_dtype: str, w_bits: int, k_group: int) -> None:
    """Validate the interface arguments; a bad combination is a BadConfigError naming the argument."""
    from banana.compiler.errors import BadConfigError

    for name, v in (("m", m), ("n", n), ("k", k)):
        if not isinstance(v, int) or v <= 0:
            raise BadConfigError(f"int_gemm: {name}={v!r} must be a positive int")
    if a_dtype not in A_DTYPES:
        raise BadConfigError(f"int_gemm: a_dtype={a_dtype!r}; expected one of {A_DTYPES}")
    if w_bits not in W_BITS:
        raise BadConfigError(f"int_gemm: w_bits={w_bits!r}; expected one of {W_BITS}")
    if k_group < 0 or (k_group > 0 and k % k_group):
        raise BadConfigError(f"int_gemm: k_group={k_group} must be 0 or a divisor of k={k}")
    limit = max_exact_k(a_dtype, w_bits)
    if (k_group or k) > limit:
        raise BadConfigError(f"int_gemm: sums of {k_group or k} {a_dtype} x int{w_bits} products can overflow "
                             f"int32 (at most {limit}); split k with k_group")


def w_shape(n: int, k: int, w_bits: int) -> tuple[int, int]:
    """Shape of the W parameter."""
    return (n, k) if w_bits == 8 else (n, (k + 1) // 2)


def c_shape(m: int, n: int, k: int, k_group: int) -> tuple[int, ...]:
    """Shape of the C parameter."""
    return (m, n) if k_group == 0 else (m, n, k // k_group)


def w_value(w: Any, j: Any, kk: Any, w_bits: int) -> Any:
    """int32 weight W[j, kk] for TE/TIR expressions; int4 nibbles sign-extended by shifts."""
    if w_bits == 8:
        return w[j, kk].astype("int32")
    byte = w[j, kk // 2].astype("int32")
    # (byte << 28) >> 28 sign-extends the low nibble, (byte << 24) >> 28 the high one.
    shifted = tvm.tirx.shift_left(byte, 28 - 4 * (kk % 2))
    return tvm.tirx.shift_right(shifted, 28)


def reference_compute(m: int, n: int, k: int, a_dtype: str, w_bits: int, k_group: int) -> tuple[Any, Any, Any]:
    """TE definition (A, W, C) of the interface; block name "C". Shared by the generic/x86 schedules."""
    a = te.placeholder((m, k), a_dtype, name="A")
    w = te.placeholder(w_shape(n, k, w_bits), "int8" if w_bits == 8 else "uint8", name="W")
    kg = k if k_group == 0 else k_group
    r = te.reduce_axis((0, kg), name="r")
    if k_group == 0:
        c = te.compute(
            (m, n), lambda i, j: te.sum(a[i, r].astype("int32") * w_value(w, j, r, w_bits), axis=r), name="C"
        )
    else:
        c = te.compute(
            c_shape(m, n, k, k_group),
            lambda i, j, g: te.sum(a[i, g * kg + r].astype("int32") * w_value(w, j, g * kg + r, w_bits), axis=r),
            name="C",
        )
    return a, w, c


def finish(func: tvm.tirx.PrimFunc, kernel: str, **attrs: Any) -> tvm.tirx.PrimFunc:
    """Mark a scheduled kernel: no global_symbol (the caller names it), is_scheduled, kernel name."""
    func = func.without_attr("global_symbol")
    func = func.with_attr("tirx.is_scheduled", True).with_attr("tirx.noalias", True)
    func = func.with_attr("banana.kernel", kernel)
    if attrs:
        func = func.with_attr("banana.knobs", str(dict(attrs)))
    return func


def generic_int_gemm(
    m: int, n: int, k: int, *, a_dtype: str = "int8", w_bits: int = 8, k_group: int = 0, tile_n: int = 8
) -> tvm.tirx.PrimFunc:
    """Portable schedule: parallel over rows, ``tile_n`` output columns per task, k innermost.

    The k loop runs over contiguous A and W rows, so LLVM's loop vectoriser widens the
    multiply-accumulate (on arm64 with +dotprod it even forms ``sdot``); correct for any shape.
    """
    a, w, c = reference_compute(m, n, k, a_dtype, w_bits, k_group)
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, w, c]))
    blk = sch.get_sblock("C")
    loops = sch.get_loops(blk)
    i, j = loops[0], loops[1]
    jo, _ = sch.split(j, factors=[None, min(tile_n, n)])
    outer = sch.fuse(i, jo)
    sch.parallel(outer)
    sch.decompose_reduction(blk, loops[-1])
    return finish(sch.mod["main"], "int_gemm.generic", tile_n=tile_n)


def _target_info(target: tvm.target.Target) -> tuple[str, str, set[str]]:
    """(kind, mtriple, mattr set) of a target."""
    kind = target.kind.name
    attrs = target.attrs
    triple = str(attrs.get("mtriple", "")) if "mtriple" in attrs else ""
    mattr = {str(x) for x in attrs.get("mattr", [])} if "mattr" in attrs else set()
    return kind, triple, mattr


def int_gemm_primfunc(
    m: int,
    n: int,
    k: int,
    *,
    target: tvm.target.Target,
    a_dtype: str = "int8",
    w_bits: int = 8,
    k_group: int = 0,
) -> tvm.tirx.PrimFunc:
    """Integer GEMM accumulation, params (A, W, C):

    C[i, j] (int32) = sum_k int32(A[i, k]) * int32(W[j, k])          when k_group == 0, C shape [m, n]
    C[i, j, g] (int32) = same sum over k in [g*k_group, (g+1)*k_group) when k_group > 0, C shape [m, n, k // k_group]
    A: a_dtype ("int8", "uint8", "int16", "uint16"), shape [m, k]. W: int8 [n, k] when w_bits == 8; when
    w_bits == 4, uint8 [n, (k + 1) // 2] holding two signed two's-complement nibbles per byte, low nibble = even k,
    odd tail nibble 0.
    Returns a scheduled PrimFunc (attr "tirx.is_scheduled"), no global_symbol (the caller names it).

    The schedule is chosen by ``target`` (see the module docstring); the arithmetic is exact on
    every path (uint8/uint16 activations and int4 weights are handled inside the kernel) while
    ``k_group or k <= max_exact_k(a_dtype, w_bits)`` (checked). uint16 here costs a run-time column-sum
    pass over W; callers that know W at compile time should re-bias to int16 instead (the integer pass does).
    """
    check_args(m, n, k, a_dtype, w_bits, k_group)
    if isinstance(target, (dict, str)):
        target = tvm.target.Target(target)
    kind, triple, mattr = _target_info(target)
    args = {"a_dtype": a_dtype, "w_bits": w_bits, "k_group": k_group}
    if kind == "hexagon" or "hexagon" in triple:
        try:
            hexagon = importlib.import_module("banana.kernels.int_gemm_hexagon")
        except ImportError as e:
            from banana.compiler.errors import UnsupportedOpError

            raise UnsupportedOpError(
                "int_gemm on hexagon needs banana.kernels.int_gemm_hexagon (HVX kernel), which is not available"
            ) from e
        return hexagon.hvx_int_gemm_primfunc(m, n, k, target=target, **args)
    if kind == "llvm" and triple.startswith("aarch64"):
        try:
            arm = importlib.import_module("banana.kernels.int_gemm_arm")
        except ImportError:
            arm = None
        if arm is not None:
            if a_dtype in ("int16", "uint16"):  # no 16-bit dot instruction: widening smlal (base NEON)
                return arm.smlal_int_gemm(m, n, k, **args)
            # smmla multiplies row pairs: a single row (GEMV) would waste half of it, sdot does not
            if "+i8mm" in mattr and (m > 1 or "+dotprod" not in mattr):
                return arm.smmla_int_gemm(m, n, k, **args)
            if "+dotprod" in mattr:
                return arm.sdot_int_gemm(m, n, k, **args)
    elif kind == "llvm" and (not triple or triple.startswith(("x86_64", "i686"))):
        try:
            x86 = importlib.import_module("banana.kernels.int_gemm_x86")
        except ImportError:
            x86 = None
        if x86 is not None:
            return x86.x86_int_gemm(m, n, k, target=target, **args)
    return generic_int_gemm(m, n, k, **args)
