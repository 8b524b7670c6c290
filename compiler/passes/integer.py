"""Quantized layers -> integer kernels: the Relax half of the QDQ lowering.

:mod:`.integer_match` cut every quantized layer out of the ONNX graph before import and left a
placeholder call (``matmul``/``conv2d`` against a parameter ``banana_int_<i>``). This pass
replaces each placeholder by what :mod:`banana.compiler.quantize.integer_reference` models:

    A (8/16-bit)    the quantized activation itself when the input is ``dequantize(q)`` -- no
                    float round trip between two integer layers -- else ``quantize(x)`` with ONNX
                    rounding (half to even; TVM's own legaliser rounds half away from zero);
                    Conv inputs go through im2col (padding with the zero point)
    acc (int32)     ``call_tir`` of :func:`banana.kernels.int_gemm.int_gemm_primfunc` for the target
    epilogue        ``float32(acc + corr[n]) * scale[n] + bias[n]``, or, when the layer ends in a
                    QuantizeLinear, ``clip(rint(float32(acc + cb[n]) * mult[n]) + zp)`` -> integer
    weight-only     a float activation into a quantized weight: :func:`weight_only_primfunc`
                    dequantizes int8/int4 weights in the inner loop (float accumulation)

Weights become int8 (or int4 packed two per byte) parameters with their per-channel constants
(``corr``/``cb`` int32, ``scale``/``mult`` float32, the output zero point) packed into one int32
parameter ``epi`` per layer (:class:`EpilogueLayout`) beside them in the weights file, so the
artifact holds no float copy of a quantized weight. Every other ``R.quantize`` in the graph gets
the same ONNX-exact rounding. ``taps=True`` makes ``main`` also return every region's integer
tensors (A, acc, requantized output) so verification can compare them bit for bit.

Per-step scales (a region with ``act_table``/``requant_table``, banana's multi-step export):
``main`` keeps the model's int64 scalar ``step`` input; each per-step constant -- the quantize's
``[scale, zp]`` and the packed ``epi`` (every field folds an activation or output scale) -- is
stored with a leading step axis and its row is selected by ``R.take(table, step, axis=0)`` before
the kernel, so the kernels are the ones of a constant-scale build (and are deduplicated the same
way). A step outside ``[0, S)`` fails at run time with a VM error (:func:`_checked_step`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax, te

from banana.compiler.passes.integer_match import PLACEHOLDER_PREFIX, Region, Skipped
from banana.compiler.quantize import integer_reference as ref

logger = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    """One quantized layer in the manifest: its precision and the kernel that runs it."""

    name: str
    op: str
    weight: str  # "int8" | "int4" | "float32" (fallback)
    act: str  # "uint8" | "int8" | "uint16" | "int16" | "float32"
    kernel: str
    epilogue: str  # "dequant" | "requant" | "weight-only" | "float-fallback"
    m: int = 0
    n: int = 0
    k: int = 0
    k_group: int = 0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "op": self.op, "weight": self.weight, "act": self.act, "kernel": self.kernel,
               "epilogue": self.epilogue, "m": self.m, "n": self.n, "k": self.k, "k_group": self.k_group}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class TapSpec:
    """What one returned tap tensor is: ``region`` index and ``kind``.

    Kinds: "x" float input of the activation quantize, "q" quantized activation, "a" GEMM input
    (im2col / flattened q; uint16 re-biased to int16 ``q - 32768``), "acc" int32 accumulator, "out"
    requantized output.
    """

    region: int
    kind: str


@dataclass
class IntegerLowering:
    mod: tvm.IRModule
    weight_names: list[str]
    weights: list[np.ndarray]
    layers: list[LayerRecord] = field(default_factory=list)
    taps: list[TapSpec] = field(default_factory=list)
    constants: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # region -> its weights-file params
    steps: int = 0  # rows of the per-step scale tables (main's ``step`` input selects one); 0: constant scales

    def to_json(self) -> dict[str, Any]:
        fallbacks = [r.name for r in self.layers if r.epilogue == "float-fallback"]
        out: dict[str, Any] = {"layers": [r.to_json() for r in self.layers], "float_fallbacks": fallbacks}
        if self.steps:
            out["steps"] = self.steps
        return out


# -- TE pieces (arithmetic identical to integer_reference) ------------------------------------------------

def quantize_params(scale: float, zp: int) -> relax.Constant:
    """A per-tensor quantize's ``[scale, zero point]`` as a float32 constant tensor (the zero point is exact).

    Why a tensor and not constants baked into the kernel: quantize kernels (and every fused kernel
    that ends in one) that differ only by these two numbers become structurally identical, and
    :mod:`banana.compiler.passes.dedupe_kernels` keeps one copy (the int8 nano DiT: ~26 kernels fewer).
    """
    return relax.const(np.array([scale, zp], dtype=np.float32))


def _quantize_te(x: te.Tensor, qparams: te.Tensor, dtype: str) -> te.Tensor:
    """``clip(rint(x / scale) + zp)`` with ``qparams = [scale, zp]`` (:func:`quantize_params`)."""
    lo, hi = ref.INT_RANGES[dtype]

    def body(*i: Any) -> Any:
        f32 = "float32"
        v = tvm.tirx.nearbyint(x(*i) / qparams[0]) + qparams[1]
        return te.max(te.min(v, tvm.tirx.const(float(hi), f32)), tvm.tirx.const(float(lo), f32)).astype(dtype)

    return te.compute(x.shape, body, name="quantize_onnx")


def _im2col_te(x: te.Tensor, conv: dict[str, Any], pad_value: Any) -> te.Tensor:
    b, c, h, w = (int(d) for d in x.shape)
    kh, kw = conv["kernel"]
    sh, sw = conv["strides"]
    pt, pl, pb, pr = conv["pads"]
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1

    def body(m: Any, kk: Any) -> Any:
        bi, rest = m // (oh * ow), m % (oh * ow)
        oy, ox = rest // ow, rest % ow
        ci, r2 = kk // (kh * kw), kk % (kh * kw)
        y, xx = oy * sh - pt + r2 // kw, ox * sw - pl + r2 % kw
        inside = tvm.tirx.all(y >= 0, y < h, xx >= 0, xx < w)
        pad = tvm.tirx.const(pad_value, x.dtype) if isinstance(pad_value, int) else pad_value(x.dtype)
        return tvm.tirx.if_then_else(inside, x[bi, ci, y, xx], pad)

    return te.compute((b * oh * ow, c * kh * kw), body, name="im2col")


def _im2col_qparams_te(x: te.Tensor, qparams: te.Tensor, conv: dict[str, Any]) -> te.Tensor:
    """im2col padded with the zero point read from ``qparams = [scale, zp]`` (per-step zero points)."""
    return _im2col_te(x, conv, lambda dtype: qparams[1].astype(dtype))


def _rebias_te(a: te.Tensor, dtype: str) -> te.Tensor:
    """uint16 codes -> the int16 kernel operand ``a - 32768`` (:func:`integer_reference.gemm_operand`).

    Why here and not in the kernel: the matching correction ``32768 * sum_k w`` is a weight
    constant, folded into ``corr``/``cb`` at compile time; this elementwise pass over A (m*k, fused
    with the quantize/im2col before it) replaces the kernel's per-call column sums of W (n*k).
    """
    kernel_dtype, offset = ref.GEMM_REBIAS[dtype]
    return te.compute(a.shape, lambda *i: (a(*i).astype("int32") - offset).astype(kernel_dtype), name="rebias")


@dataclass(frozen=True)
class EpilogueLayout:
    """Where each per-channel constant of a region sits in its one packed int32 parameter (``epi``).

    Why packed: the lean build has the VM check every weight (dtype, shape, an error string each:
    ~250 bytes of library per parameter), and a weights-file entry costs ~60 bytes more; one
    ``epi`` per layer instead of ``corr``/``scale``/``bias`` (or ``cb``/``mult`` and the output zero
    point) is ~100 parameters fewer on the int8 nano DiT. float32 fields are stored by their bits
    and read back with ``reinterpret``: the arithmetic and its results are unchanged.
    """

    fields: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype: int32 | float32)

    @classmethod
    def of(cls, parts: dict[str, np.ndarray]) -> EpilogueLayout:
        return cls(tuple((k, tuple(int(d) for d in a.shape), str(a.dtype)) for k, a in parts.items()))

    def __contains__(self, name: str) -> bool:
        return any(f[0] == name for f in self.fields)

    def load(self, epi: te.Tensor, name: str, *index: Any) -> Any:
        """``name[index]`` read from the packed tensor ``epi`` (row-major within its field)."""
        offset = 0
        for field_name, shape, dtype in self.fields:
            if field_name == name:
                flat: Any = offset
                stride = 1
                for i, d in reversed(list(zip(index, shape, strict=True))):
                    flat = flat + i * stride
                    stride *= d
                value = epi[flat]
                return value if dtype == "int32" else tvm.tirx.reinterpret(dtype, value)
            offset += int(np.prod(shape))
        raise KeyError(name)


def pack_epilogue(parts: dict[str, np.ndarray]) -> np.ndarray:
    """The int32 vector :class:`EpilogueLayout` describes: every part flattened, float32 by its bits."""
    for key, a in parts.items():
        if a.dtype not in (np.int32, np.float32):
            raise TypeError(f"epilogue constant '{key}': {a.dtype}, expected int32 or float32")
    return np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.int32) for a in parts.values()])


def _dequant_groups_te(acc: te.Tensor, corr: te.Tensor, scale: te.Tensor, *bias: te.Tensor) -> te.Tensor:
    """Group-wise ``sum_g float32(acc + corr) * scale (+ bias)``, constants as separate tensors: dlight's
    reduction analysis needs one access region per buffer, so grouped layers are not packed."""
    g = te.reduce_axis((0, acc.shape[2]), name="g")
    y = te.compute(acc.shape[:2], lambda i, j: te.sum(
        (acc[i, j, g] + corr[j, g]).astype("float32") * scale[j, g], axis=g), name="dequant_groups")
    if not bias:
        return y
    return te.compute(y.shape, lambda i, j: y[i, j] + bias[0][j], name="dequant_bias")


def _dequant_te(acc: te.Tensor, epi: te.Tensor, layout: EpilogueLayout) -> te.Tensor:
    """``float32(acc + corr) * scale (+ bias)`` with the constants read from the packed ``epi``."""
    ld = layout.load
    if "bias" not in layout:
        return te.compute(acc.shape, lambda i, j: (acc[i, j] + ld(epi, "corr", j)).astype("float32")
                          * ld(epi, "scale", j), name="dequant")
    return te.compute(acc.shape, lambda i, j: (acc[i, j] + ld(epi, "corr", j)).astype("float32")
                      * ld(epi, "scale", j) + ld(epi, "bias", j), name="dequant")


def _requant_te(acc: te.Tensor, epi: te.Tensor, layout: EpilogueLayout, dtype: str) -> te.Tensor:
    """``clip(rint(float32(acc + cb) * mult) + zp)``; the output zero point ``zp`` is read from ``epi``
    too (see :func:`quantize_params` for why not a constant in the kernel)."""
    lo, hi = ref.INT_RANGES[dtype]
    ld = layout.load

    def body(i: Any, j: Any) -> Any:
        r = tvm.tirx.nearbyint((acc[i, j] + ld(epi, "cb", j)).astype("float32") * ld(epi, "mult", j)).astype("int32")
        r = r + ld(epi, "zp", 0)
        return te.max(te.min(r, hi), lo).astype(dtype)

    return te.compute(acc.shape, body, name="requant")


def _weight_only_te(x: te.Tensor, w: te.Tensor, scale: te.Tensor, bias: te.Tensor | None, k: int, w_bits: int,
                    k_group: int) -> te.Tensor:
    """Float activation x integer weight: dequantize in the inner loop, never materialise float weights."""
    from banana.kernels.int_gemm import w_value

    m = int(x.shape[0])
    n = int(w.shape[0])
    r = te.reduce_axis((0, k), name="r")
    if k_group:
        y = te.compute((m, n), lambda i, j: te.sum(
            x[i, r] * w_value(w, j, r, w_bits).astype("float32") * scale[j, r // k_group], axis=r), name="wo_matmul")
    else:
        acc = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w_value(w, j, r, w_bits).astype("float32"), axis=r),
                         name="wo_matmul")
        y = te.compute((m, n), lambda i, j: acc[i, j] * scale[j], name="wo_scale")
    if bias is None:
        return y
    return te.compute((m, n), lambda i, j: y[i, j] + bias[j], name="wo_bias")


def weight_only_primfunc(m: int, n: int, k: int, w_shape: tuple[int, ...], w_dtype: str, scale_shape: tuple[int, ...],
                         w_bits: int, k_group: int, bias: bool) -> tvm.tirx.PrimFunc:
    """The weight-only layer as a scheduled PrimFunc (rows in parallel).

    Scheduled here, not by dlight: dlight's reduction rules miscompile the int4 nibble shifts
    (measured: errors of ~1e3 on a 15x20x32 layer), and an opaque kernel keeps FuseOps away.
    """
    x = te.placeholder((m, k), "float32", name="X")
    w = te.placeholder(w_shape, w_dtype, name="W")
    sc = te.placeholder(scale_shape, "float32", name="S")
    b = te.placeholder((n,), "float32", name="B") if bias else None
    y = _weight_only_te(x, w, sc, b, k, w_bits, k_group)
    args = [x, w, sc] + ([b] if b is not None else []) + [y]
    sch = tvm.s_tir.Schedule(te.create_prim_func(args))
    sch.parallel(sch.get_loops(sch.get_sblock("wo_matmul"))[0])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)


# -- per-region constants ------------------------------------------------------------------------------------

def region_constants(region: Region) -> dict[str, np.ndarray]:
    """The parameters a region stores, computed once here and by the reference (same functions)."""
    from banana.kernels.int_gemm import pack_int4

    out: dict[str, np.ndarray] = {}
    w_bits = region.w_bits
    out["w"] = pack_int4(region.w) if w_bits == 4 else region.w.astype(np.int8)
    if region.act is None:
        out["scale"] = region.sw.astype(np.float32)
        if region.bias is not None:
            out["bias"] = region.bias.astype(np.float32)
        return out
    sa, zp_a, a_dtype = region.act
    scale = ref.combined_scale(sa, region.sw)
    # the kernel operand's zero point: uint16 codes reach the kernel re-biased to int16 (zp - 32768)
    corr = ref.zero_point_correction(region.w, ref.gemm_zero_point(zp_a, a_dtype), region.k_group)
    if region.requant is not None:
        so, _, _ = region.requant
        bias_q = ref.bias_to_int32(region.bias, scale) if region.bias is not None else np.zeros(region.n, np.int32)
        out["cb"] = (corr.astype(np.int64) + bias_q).astype(np.int32)
        out["mult"] = ref.requant_multiplier(sa, region.sw, so)
        out["zp"] = np.array([region.requant[1]], dtype=np.int32)
    else:
        out["corr"] = corr
        out["scale"] = scale
        if region.bias is not None:
            out["bias"] = region.bias.astype(np.float32)
    return out


def stored_constants(region: Region, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the weights file holds for a region: ``w`` and, for integer activations, one packed
    ``epi`` (:class:`EpilogueLayout`); weight-only layers keep ``w``/``scale``/``bias`` (backend hooks
    such as :mod:`.integer_adreno` read those), group-wise layers ``corr``/``scale``/``bias``.

    A region with per-step scales stores every constant but ``w`` as a table ``[S, ...]`` (one row
    per step, each row what :meth:`Region.at_step` would store); ``parts`` is then ignored."""
    if region.steps:
        rows = [stored_constants(r, region_constants(r)) for r in (region.at_step(s) for s in range(region.steps))]
        return {k: (v if k == "w" else np.stack([row[k] for row in rows])) for k, v in rows[0].items()}
    if region.act is None or (region.k_group and region.requant is None):  # grouped: see _dequant_groups_te
        return dict(parts)
    return {"w": parts["w"], "epi": pack_epilogue({k: v for k, v in parts.items() if k != "w"})}


def step_qparams_table(region: Region) -> np.ndarray:
    """``[S, 2]`` float32: row ``s`` is :func:`quantize_params` of step ``s``'s activation scale and zero point."""
    scales, zps = region.act_table
    return np.stack([np.array([float(np.float32(s)), int(z)], np.float32) for s, z in zip(scales, zps, strict=True)])


# -- the rewriter --------------------------------------------------------------------------------------------

def _is_op(value: Any, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def _const_value(c: Any) -> np.ndarray:
    v = c.value
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def _kernel_name(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> str:
    """The kernel's own label (attr ``banana.kernel``), else the module that made it for this target."""
    attrs = func.attrs
    if attrs is not None and "banana.kernel" in attrs:
        return str(attrs["banana.kernel"])
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    return "int_gemm_hexagon.hvx" if target.kind.name == "hexagon" or "hexagon" in triple else "int_gemm"


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, func: relax.Function, regions: dict[str, Region],
                 params: dict[int, dict[str, relax.Var]], target: tvm.target.Target, taps: bool,
                 weight_only: Callable[..., tuple[relax.Expr, LayerRecord]] | None = None,
                 layouts: dict[int, EpilogueLayout] | None = None) -> None:
        super().__init__(mod)
        self.regions = regions
        self.layouts = layouts or {}  # region -> where its epilogue constants sit in its ``epi`` parameter
        self.weight_only = weight_only  # a backend's own weight-only lowering (passes.integer_adreno)
        self.params = params
        self.target = target
        self.want_taps = taps
        self.taps: list[tuple[TapSpec, relax.Var]] = []
        self.records: list[LayerRecord] = []
        self.kernels: dict[tuple, tuple[relax.GlobalVar, str]] = {}
        self.bound: dict[relax.Var, relax.Expr] = {}
        self.uses: dict[relax.Var, list[relax.Var]] = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.bound[b.var] = b.value
                    for v in relax.analysis.free_vars(b.value):
                        self.uses.setdefault(v, []).append(b.var)
        self.skip: set[relax.Var] = set()
        self.requant_of: dict[relax.Var, relax.Var] = {}  # placeholder var -> its QuantizeLinear var
        self.step: relax.Var | None = None  # main's ``step`` input (regions with per-step scales)
        self.steps = 0  # rows of every per-step table
        self.checked_step: relax.Var | None = None
        self.step_qparams: dict[int, relax.Var] = {}

    def _row(self, table: relax.Expr) -> relax.Var:
        """Row ``step`` of a per-step table (leading axis): what the kernel gets instead of a constant."""
        if self.checked_step is None:  # once, before the first row is read: see _checked_step
            gvar = self.builder_.add_func(_checked_step(self.steps, str(self.step.ty.dtype)), "banana_step_check")
            check = relax.call_tir(gvar, [self.step], relax.TensorType([], str(self.step.ty.dtype)))
            self.checked_step = self.builder_.emit_output(check, "step_checked")
        # "clip" after the check: the same row, and no out-of-bounds read should the check ever be bypassed
        return self.builder_.emit(relax.op.take(table, self.checked_step, axis=0, mode="clip"))

    def _region_params(self, region: Region) -> dict[str, relax.Expr]:
        """The region's parameters as its kernels read them: per-step tables reduced to this step's row."""
        p = self.params[region.index]
        if not region.steps:
            return p
        return {k: (v if k == "w" else self._row(v)) for k, v in p.items()}

    def _qparams(self, region: Region) -> relax.Expr:
        sa, zp, _ = region.act
        if region.act_table is None:
            return quantize_params(sa, zp)
        if region.index not in self.step_qparams:  # one row per region (quantize and a Conv's im2col share it)
            self.step_qparams[region.index] = self._row(relax.const(step_qparams_table(region)))
        return self.step_qparams[region.index]

    # placeholder matmul/conv2d: which region (by its weight parameter)
    def _region(self, value: relax.Expr) -> Region | None:
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return None
        if value.op.name not in ("relax.matmul", "relax.nn.conv2d") or len(value.args) < 2:
            return None
        w = value.args[1]
        if isinstance(w, relax.Var) and w.name.startswith(PLACEHOLDER_PREFIX):
            return self.regions.get(w.name)
        return None

    def _emit(self, value: relax.Expr, like: relax.Var, name: str) -> relax.Var:
        value = self.builder_.normalize(value)
        if isinstance(like, relax.DataflowVar):
            return self.builder_.emit(value, name)
        return self.builder_.emit_output(value, name)

    def _tap(self, region: Region, kind: str, var: relax.Expr) -> None:
        if self.want_taps:
            out = self.builder_.emit_output(var, f"tap_{region.index}_{kind}")
            self.taps.append((TapSpec(region.index, kind), out))

    def _quantized_input(self, region: Region, arg: relax.Expr) -> relax.Expr:
        """The region's integer input: the quantized tensor itself when ``arg`` dequantizes one, else quantize(arg)."""
        sa, zp, dtype = region.act
        src = self.bound.get(arg) if isinstance(arg, relax.Var) else None
        if _is_op(src, "relax.dequantize") and str(src.args[0].ty.dtype) == dtype:
            q = src.args[0]
            upstream = self.bound.get(q) if isinstance(q, relax.Var) else None
            from_float = _is_op(upstream, "relax.quantize") and str(upstream.args[0].ty.dtype) == "float32" \
                and q not in self.skip  # a requantized region output has no float source
            if from_float:
                x = self.visit_expr(upstream.args[0])
                self._tap(region, "x", x)
            if from_float and region.act_table is not None:  # a gathered-scale pair the matcher kept: quantize
                qv = self.builder_.emit_te(_quantize_te, x, self._qparams(region), dtype,  # here, ONNX rounding
                                           primfunc_name_hint="quantize_onnx")
            else:
                qv = self.visit_expr(q)
        else:
            x = self.visit_expr(arg)
            self._tap(region, "x", x)
            qv = self.builder_.emit_te(_quantize_te, x, self._qparams(region), dtype,
                                       primfunc_name_hint="quantize_onnx")
        self._tap(region, "q", qv)
        return qv

    def _int_gemm(self, region: Region, m: int) -> tuple[relax.GlobalVar, str]:
        from banana.kernels.int_gemm import int_gemm_primfunc

        a_dtype = ref.gemm_dtype(region.act[2])  # uint16 arrives re-biased to int16 (see _rebias_te)
        key = (m, region.n, region.k, a_dtype, region.w_bits, region.k_group)
        if key not in self.kernels:
            func = int_gemm_primfunc(m, region.n, region.k, target=self.target, a_dtype=a_dtype,
                                     w_bits=region.w_bits, k_group=region.k_group)
            symbol = f"banana_int_gemm_{len(self.kernels)}_{m}x{region.n}x{region.k}"
            # op_pattern kOpaque (8): FuseOps must not merge the scheduled kernel into its epilogue
            func = func.with_attr("global_symbol", symbol).with_attr("op_pattern", 8)
            gvar = self.builder_.add_func(func, symbol)
            self.kernels[key] = (gvar, _kernel_name(func, self.target))
        return self.kernels[key]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        if var in self.skip:
            return
        region = self._region(value)
        if region is not None:
            self._lower(region, var, value)
            return
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.quantize":
            exact = self._exact_quantize(value)
            if exact is not None:
                keep = isinstance(var, relax.DataflowVar)
                self.set_var_remap(var, exact if keep else self._emit(exact, var, var.name))
                return
        super().visit_var_binding_(binding)

    def _exact_quantize(self, call: relax.Call) -> relax.Var | None:
        """ONNX QuantizeLinear rounding (half to even) for a per-tensor constant-scale quantize."""
        x, scale, zp = call.args[:3]
        if not isinstance(scale, tvm.ir.GenericConst) or not isinstance(zp, tvm.ir.GenericConst):
            return None
        s, z = _const_value(scale), _const_value(zp)
        dtype = str(call.ty.dtype)
        if s.size != 1 or z.size != 1 or str(x.ty.dtype) != "float32" or dtype not in ref.INT_RANGES:
            return None
        qparams = quantize_params(float(s.reshape(-1)[0]), int(z.reshape(-1)[0]))
        return self.builder_.emit_te(_quantize_te, self.visit_expr(x), qparams, dtype,
                                     primfunc_name_hint="quantize_onnx")

    def _lower(self, region: Region, var: relax.Var, value: relax.Call) -> None:
        p = self._region_params(region)
        out_shape = [int(d) for d in var.ty.shape.values]
        bias = p.get("bias")
        if region.act is None:  # weight-only: float activation
            x = self.visit_expr(value.args[0])
            if self.weight_only is not None:
                y_wo, record = self.weight_only(self.builder_, region, x, p, out_shape)
                self.set_var_remap(var, self._emit(y_wo, var, var.name))
                self.records.append(record)
                return
            if region.conv is not None:  # float im2col (zero padding), then the same row kernel
                b, _, oh, ow = out_shape
                m = b * oh * ow
                x2 = self.builder_.emit_te(_im2col_te, x, region.conv, 0, primfunc_name_hint="im2col")
            else:
                m = int(np.prod(out_shape[:-1]))
                x2 = self.builder_.emit(relax.op.reshape(x, [m, region.k]))
            args = [x2, p["w"], p["scale"]] + ([bias] if bias is not None else [])
            w_ty, s_ty = p["w"].ty, p["scale"].ty
            func = weight_only_primfunc(m, region.n, region.k, tuple(int(d) for d in w_ty.shape.values),
                                        str(w_ty.dtype), tuple(int(d) for d in s_ty.shape.values), region.w_bits,
                                        region.k_group, bias is not None)
            symbol = f"banana_weight_only_{region.index}"
            gvar = self.builder_.add_func(func.with_attr("global_symbol", symbol), symbol)
            y = self.builder_.emit(relax.call_tir(gvar, args, relax.TensorType([m, region.n], "float32")))
            if region.conv is not None:
                y = self.builder_.emit(relax.op.reshape(y, [out_shape[0], out_shape[2], out_shape[3], region.n]))
                y_out: relax.Expr = relax.op.permute_dims(y, [0, 3, 1, 2])
            else:
                y_out = relax.op.reshape(y, out_shape)
            self.set_var_remap(var, self._emit(y_out, var, var.name))
            self.records.append(LayerRecord(region.node, region.op, f"int{region.w_bits}", "float32",
                                            "weight_only.rows", "weight-only", m, region.n, region.k, region.k_group))
            return
        a = self._quantized_input(region, value.args[0])
        if region.conv is not None and region.act_table is not None and len(set(region.act_table[1].tolist())) > 1:
            a2 = self.builder_.emit_te(_im2col_qparams_te, a, self._qparams(region), region.conv,
                                       primfunc_name_hint="im2col")  # per-step zero point: the padding too
        elif region.conv is not None:
            a2 = self.builder_.emit_te(_im2col_te, a, region.conv, region.act[1], primfunc_name_hint="im2col")
        if region.conv is not None:
            b, _, oh, ow = out_shape
            m = b * oh * ow
        else:
            m = int(np.prod(out_shape[:-1]))
            a2 = self.builder_.emit(relax.op.reshape(a, [m, region.k]))
        if ref.gemm_dtype(region.act[2]) != region.act[2]:  # uint16 codes -> int16 (zp - 32768 is in corr/cb)
            a2 = self.builder_.emit_te(_rebias_te, a2, region.act[2], primfunc_name_hint="rebias")
        gvar, kernel = self._int_gemm(region, m)
        c_shape = [m, region.n] if region.k_group == 0 else [m, region.n, region.k // region.k_group]
        acc = self.builder_.emit(relax.call_tir(gvar, [a2, p["w"]], relax.TensorType(c_shape, "int32")))
        self._tap(region, "a", a2)
        self._tap(region, "acc", acc)
        quant_var = self.requant_of.get(var)
        if quant_var is not None:
            dtype = region.requant[2]
            layout = self.layouts[region.index]  # not an emit_te argument: emit_te converts those to tensors
            y = self.builder_.emit_te(lambda aa, ee: _requant_te(aa, ee, layout, dtype), acc, p["epi"],
                                      primfunc_name_hint="requant")
            self._tap(region, "out", y)
            target_var, epilogue = quant_var, "requant"
        else:
            if region.k_group:
                args = [acc, p["corr"], p["scale"]] + ([bias] if bias is not None else [])
                y = self.builder_.emit_te(_dequant_groups_te, *args, primfunc_name_hint="dequant")
            else:
                layout = self.layouts[region.index]
                y = self.builder_.emit_te(lambda aa, ee: _dequant_te(aa, ee, layout), acc, p["epi"],
                                          primfunc_name_hint="dequant")
            target_var, epilogue = var, "dequant"
        if region.conv is not None:
            b, _, oh, ow = out_shape
            y = self.builder_.emit(relax.op.reshape(y, [b, oh, ow, region.n]))
            result: relax.Expr = relax.op.permute_dims(y, [0, 3, 1, 2])
        else:
            result = relax.op.reshape(y, out_shape)
        self.set_var_remap(target_var, self._emit(result, target_var, target_var.name))
        self.records.append(LayerRecord(region.node, region.op, f"int{region.w_bits}", region.act[2], kernel, epilogue,
                                        m, region.n, region.k, region.k_group))

    def plan_requant(self) -> None:
        """Placeholders whose only user is a constant-scale quantize of the region's planned output."""
        for var, value in self.bound.items():
            region = self._region(value)
            if region is None or region.requant is None:
                continue
            users = self.uses.get(var, [])
            if len(users) != 1:
                continue
            q = self.bound.get(users[0])
            if isinstance(q, relax.Call) and isinstance(q.op, tvm.ir.Op) and q.op.name == "relax.quantize" \
                    and q.args[0].same_as(var) and str(q.ty.dtype) == region.requant[2]:
                self.requant_of[var] = users[0]
                self.skip.add(users[0])


def _checked_step(steps: int, dtype: str) -> tvm.tirx.PrimFunc:
    """``step`` unchanged, after a run-time check that it indexes the per-step tables (``0 <= step < steps``).

    Why: ``R.take`` reads out of bounds without a check (its "fast" mode; "clip"/"wrap" would run a
    wrong step's scales silently), whereas the ONNX ``Gather`` fails. Not a TIR ``assert``: the
    lean build compiles with ``tirx.disable_assert`` (:mod:`banana.targets.backends.host`), which
    drops asserts; the error is raised the way an assert's lowering raises it (set the FFI error,
    return -1), so the VM call fails with this message.
    """
    from tvm.script import tirx as T

    message = f"banana: input 'step' is out of range: this model has per-step scales for steps 0..{steps - 1}"

    @T.prim_func(private=True, s_tir=True)
    def check(a: T.Buffer((), dtype), b: T.Buffer((), dtype)) -> None:
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        with T.sblock("root"):
            T.reads()
            T.writes()
            if a[()] < 0 or a[()] >= steps:
                T.evaluate(T.call_extern("void", "TVMFFIErrorSetRaisedFromCStr", "ValueError", message))
                T.evaluate(T.tvm_throw_last_error())
            b[()] = a[()]

    return check


def _step_input(func: relax.Function, n_inputs: int, regions: Sequence[Region]) -> relax.Var | None:
    """main's int64 scalar input that selects the per-step scales (None when no region has tables)."""
    stepped = [r for r in regions if r.steps]
    if not stepped:
        return None
    from banana.compiler.errors import UnsupportedOpError

    names = {r.step_input for r in stepped}
    counts = {r.steps for r in stepped}
    if len(names) != 1 or len(counts) != 1:
        raise UnsupportedOpError(f"quantized layer '{stepped[0].node}': per-step scales are selected by inputs "
                                 f"{sorted(map(str, names))} with {sorted(counts)} steps; one step input expected")
    name = names.pop()
    for p in func.params[:n_inputs]:
        if p.name == name:
            ty = p.ty
            if not isinstance(ty, relax.TensorType) or str(ty.dtype) not in ("int64", "int32") or ty.ndim != 0:
                raise UnsupportedOpError(f"quantized layer '{stepped[0].node}': step input '{name}' is {ty}, "
                                         "an int64 scalar expected")
            return p
    raise UnsupportedOpError(f"quantized layer '{stepped[0].node}': its step input '{name}' is not an input of main")


def lower_integer_regions(mod: tvm.IRModule, weight_names: Sequence[str], weights: Sequence[np.ndarray],
                          regions: Sequence[Region], target: tvm.target.Target | dict[str, Any], *,
                          skipped: Sequence[Skipped] = (), taps: bool = False,
                          weight_only: Callable[..., tuple[relax.Expr, LayerRecord]] | None = None) -> IntegerLowering:
    """Replace the placeholders of ``regions`` in ``mod['main']``; returns the module and its new weights.

    ``weight_names``/``weights`` are main's parameters after the model inputs (in order); the
    placeholders leave them and each region's integer parameters are appended. ``weight_only``:
    a backend whose weight-only layers need their own kernel (the Adreno GPU,
    :mod:`.integer_adreno`) lowers them through this hook instead of :func:`weight_only_primfunc`.
    """
    if isinstance(target, dict):
        target = tvm.target.Target(target)
    func = mod["main"]
    by_name = {r.placeholder: r for r in regions}
    names = list(weight_names)
    values = list(weights)
    n_inputs = len(func.params) - len(names)
    new_params: list[relax.Var] = []
    param_vars: dict[int, dict[str, relax.Var]] = {}
    constants: dict[int, dict[str, np.ndarray]] = {}
    layouts: dict[int, EpilogueLayout] = {}
    for region in regions:
        parts = region_constants(region)
        layouts[region.index] = EpilogueLayout.of({k: v for k, v in parts.items() if k != "w"})
        consts = stored_constants(region, parts)
        constants[region.index] = consts
        param_vars[region.index] = {}
        for key, arr in consts.items():
            name = f"{region.placeholder}_{key}"
            v = relax.Var(name, relax.TensorType(list(arr.shape), str(arr.dtype)))
            param_vars[region.index][key] = v
            new_params.append(v)
    rewriter = _Rewriter(mod, func, by_name, param_vars, target, taps, weight_only, layouts)
    rewriter.step = _step_input(func, n_inputs, regions)
    rewriter.steps = max((r.steps for r in regions), default=0)
    rewriter.plan_requant()
    new_func = rewriter.visit_expr(func)
    keep = [i for i, name in enumerate(names) if not name.startswith(PLACEHOLDER_PREFIX)]
    found = {r.name for r in rewriter.records}
    missing = [r.node for r in regions if r.node not in found]
    if missing:
        from banana.compiler.errors import UnsupportedOpError

        raise UnsupportedOpError(f"quantized layer '{missing[0]}': its placeholder did not survive import "
                                 f"({len(missing)} layers affected)")
    params = list(new_func.params[:n_inputs]) + [new_func.params[n_inputs + i] for i in keep] + new_params
    body = new_func.body
    ret_ty = None
    tap_specs = [spec for spec, _ in rewriter.taps]
    if taps and rewriter.taps:
        ret = body.body
        fields = (list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]) + [v for _, v in rewriter.taps]
        body = relax.SeqExpr(body.blocks, relax.Tuple(fields))
        ret_ty = relax.TupleType([f.ty for f in fields])
    out_func = relax.Function(params, body, ret_ty, new_func.is_pure, new_func.attrs)
    rewriter.builder_.update_func(mod.get_global_var("main"), out_func)
    new_mod = relax.transform.DeadCodeElimination(["main"])(rewriter.builder_.get())
    new_mod = relax.transform.Normalize()(new_mod)
    out_names = [names[i] for i in keep] + [v.name for v in new_params]
    out_values = [values[i] for i in keep] + [arr for r in regions for arr in constants[r.index].values()]
    records = list(rewriter.records)
    records += [LayerRecord(s.node, s.op, "float32", "float32", "tvm.float", "float-fallback", reason=s.reason)
                for s in skipped]
    for r in rewriter.records:
        logger.info("integer layer %s: %s, w %s a %s, %s epilogue", r.name, r.kernel, r.weight, r.act, r.epilogue)
    return IntegerLowering(mod=new_mod, weight_names=out_names, weights=out_values, layers=records, taps=tap_specs,
                           constants=constants, steps=rewriter.steps)
