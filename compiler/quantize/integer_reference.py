"""banana's integer reference: a numpy model of exactly the integer arithmetic the compiled layers run.

The quantized-layer pass (:mod:`banana.compiler.passes.integer`) lowers every quantized
``DQ -> MatMul | Gemm | Conv [-> Add bias] [-> Q]`` region to four steps. This module is the same
four steps in numpy, written once, so a compiled artifact can be checked **bit-exact on its
integer tensors** (quantized activations, int32 accumulators, requantized outputs):

1. ``quantize``      ``q = clip(rint(float32(x) / float32(s)) + zp, lo, hi)`` -- ONNX QuantizeLinear:
                     true division, round half to even, saturation to the integer type's range.
2. ``accumulate``    ``acc = sum_k int32(a[m, k]) * int32(w[n, k])`` (per k-group when weights have
                     block scales); int32, wrapping like the kernel (no real layer comes near 2**31).
                     ``a`` is the *kernel operand* (:func:`gemm_operand`): the codes themselves, except
                     uint16 codes, which are re-biased to int16 ``a - 32768`` with ``zp_a - 32768`` as
                     their zero point (:func:`gemm_zero_point`), so ``a - zp_a`` is unchanged.
3. ``dequant``       ``y = float32(acc + corr[n]) * scale[n] (+ bias[n])`` with
                     ``corr[n] = -zp_a * sum_k w[n, k]`` (the activation zero point folded into one
                     int32 per channel at compile time) and ``scale = float32(float64(sa) * sw[n])``.
4. ``requant``       when the region ends in a QuantizeLinear (onnxruntime's QDQ form):
                     ``q = clip(rint(float32(acc + cb[n]) * mult[n]) + zp_out, lo, hi)`` with
                     ``cb[n] = corr[n] + rint(bias[n] / scale[n])`` and the float32 multiplier
                     ``mult[n] = float32(float64(sa) * float64(sw[n]) / float64(so))`` computed once.

Why this epilogue, and why it stays within one output step of onnxruntime's float path
(``DQ -> op -> Q``, which computes ``rint((sum_k (a-zp)*sa*w*sw + bias) / so)`` in float32):
the exact value of both is ``((acc + corr) * sa * sw + bias) / so``; ours rounds it once (one
float32 product of an exactly-converted int and a correctly rounded multiplier, relative error
<= 2**-23), onnxruntime rounds after ``k`` float32 additions. Folding the bias into the int32
accumulator moves the result by at most ``0.5 * sa * sw / so`` output steps (``sa * sw << so`` in
practice). Both errors are far below half a step, so the two ``rint``\\ s can only disagree when
the exact value sits next to a ``.5`` boundary -- by exactly one step. A single multiply (no
multiply-add) also keeps LLVM's FMA contraction from making compiled and numpy results differ.

Per-step scales (a model whose scales are gathered by its ``step`` input): step ``s`` runs exactly
these four steps with step ``s``'s scales and zero points
(:meth:`banana.compiler.passes.integer_match.Region.at_step`); the compiled tables hold each
step's constants as computed here, row by row.
"""

from __future__ import annotations

import numpy as np

INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}

#: activation dtypes the GEMM kernels receive re-biased: dtype -> (kernel dtype, offset subtracted from codes
#: and zero point). Why: no 16-bit SIMD multiply here (x86 pmaddwd, arm smlal) has a uint16 x int8 form, and
#: the correction ``32768 * sum_k w`` is a weight constant -- folded into ``corr``/``cb`` at compile time
#: instead of a column-sum pass over W on every call inside the kernel.
GEMM_REBIAS = {"uint16": ("int16", 32768)}


def gemm_dtype(dtype: str) -> str:
    """The activation dtype the integer GEMM kernel is built for (uint16 -> int16; others unchanged)."""
    return GEMM_REBIAS.get(dtype, (dtype, 0))[0]


def gemm_zero_point(zero_point: int, dtype: str) -> int:
    """The zero point of the kernel operand: ``zp - 32768`` for uint16 codes, else ``zp``."""
    return int(zero_point) - GEMM_REBIAS.get(dtype, (dtype, 0))[1]


def gemm_operand(a: np.ndarray, dtype: str) -> np.ndarray:
    """The GEMM kernel's operand for activation codes ``a`` of ``dtype``: uint16 -> int16 ``a - 32768``."""
    kernel_dtype, offset = GEMM_REBIAS.get(dtype, (dtype, 0))
    if not offset:
        return np.asarray(a)
    return (np.asarray(a).astype(np.int32) - offset).astype(kernel_dtype)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """ONNX QuantizeLinear (per tensor): float32 division, round half to even, saturate."""
    lo, hi = INT_RANGES[dtype]
    scaled = np.asarray(x, np.float32) / np.float32(scale)
    return np.clip(np.rint(scaled) + np.float32(zero_point), lo, hi).astype(dtype)


def accumulate(a: np.ndarray, w: np.ndarray, k_group: int = 0) -> np.ndarray:
    """int32 GEMM ``a [m, k] x w [n, k]^T``; with ``k_group > 0`` one sum per k-group: ``[m, n, k // k_group]``."""
    a64 = np.asarray(a).astype(np.int64)
    w64 = np.asarray(w).astype(np.int64)
    if k_group == 0:
        acc = a64 @ w64.T
    else:
        m, k = a64.shape
        g = k // k_group
        acc = np.einsum("mgk,ngk->mng", a64.reshape(m, g, k_group), w64.reshape(w64.shape[0], g, k_group))
    return acc.astype(np.int32)  # wraps exactly like int32 hardware accumulation


def combined_scale(sa: float, sw: np.ndarray) -> np.ndarray:
    """``float32(sa * sw)``: the dequantization scale of an accumulator, computed once in float64."""
    return (np.float64(np.float32(sa)) * np.asarray(sw, np.float32).astype(np.float64)).astype(np.float32)


def requant_multiplier(sa: float, sw: np.ndarray, so: float) -> np.ndarray:
    """``float32(sa * sw / so)`` computed in float64 and rounded once."""
    s64 = np.float64(np.float32(sa)) * np.asarray(sw, np.float32).astype(np.float64)
    return (s64 / np.float64(np.float32(so))).astype(np.float32)


def zero_point_correction(w: np.ndarray, zp_a: int, k_group: int = 0) -> np.ndarray:
    """``-zp_a * sum_k w[n, k]`` (int32) per channel ``[n]``, or per channel and group ``[n, g]``."""
    w64 = np.asarray(w).astype(np.int64)
    if k_group:
        w64 = w64.reshape(w64.shape[0], -1, k_group)
    return (-int(zp_a) * w64.sum(axis=-1)).astype(np.int32)


def bias_to_int32(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A float bias in accumulator units: ``rint(bias / scale)`` (int32), as onnxruntime's QDQ Gemm stores it."""
    return np.rint(np.asarray(bias, np.float64) / np.asarray(scale, np.float64)).astype(np.int32)


def dequant(acc: np.ndarray, corr: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Float output of a dequantizing epilogue (float tensors are compared with a tolerance, not bit-exact)."""
    if acc.ndim == 3:  # k-groups: accumulate float32 partial products group by group
        y = np.zeros(acc.shape[:2], np.float32)
        for g in range(acc.shape[2]):
            y = y + (acc[:, :, g] + corr[None, :, g]).astype(np.float32) * scale[None, :, g]
    else:
        y = (acc + corr[None, :]).astype(np.float32) * scale[None, :]
    if bias is not None:
        y = y + np.asarray(bias, np.float32)[None, :]
    return y.astype(np.float32)


def requant(acc: np.ndarray, cb: np.ndarray, mult: np.ndarray, zp_out: int, dtype: str) -> np.ndarray:
    """Integer output of a requantizing epilogue: ``clip(rint(float32(acc + cb) * mult) + zp_out)``."""
    lo, hi = INT_RANGES[dtype]
    prod = (acc.astype(np.int32) + cb[None, :].astype(np.int32)).astype(np.float32) * mult[None, :]
    return np.clip(np.rint(prod).astype(np.int64) + int(zp_out), lo, hi).astype(dtype)


def im2col(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, int, int, int],
           pad_value: int) -> np.ndarray:
    """NCHW integer input -> ``[b * oh * ow, c * kh * kw]`` patches (k order c, ki, kj), padded with the zero point."""
    b, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = strides
    pt, pl, pb, pr = pads
    xp = np.full((b, c, h + pt + pb, w + pl + pr), pad_value, x.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    cols = np.empty((b, oh, ow, c, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, :, i, j] = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw].transpose(0, 2, 3, 1)
    return cols.reshape(b * oh * ow, c * kh * kw)
