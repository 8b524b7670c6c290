"""Quantized layers on the Adreno backend: weight-only GEMM, weights dequantised in registers.

Adreno runs float activations (the mixed-precision search's adreno pairs are (int4, fp16),
(int8, fp16), (fp16, fp16)), so every quantized MatMul/Gemm/Conv becomes a call of
:func:`banana.kernels.wo_gemm_adreno.weight_only_gemm_primfunc`: the int8 (or int4, two per byte)
weights and their scales are the parameters, and no float copy of a weight exists anywhere --
not in the artifact, not in global memory at run time.

W8A8 layers (a ``DQ(Q(x))`` pair in front of the layer): the **activation QDQ is kept as float
fake-quant ops** and the layer runs weight-only. Why not an error: ``quantize -> dequantize`` in
float is exactly what onnxruntime computes for the QDQ graph (ONNX's half-to-even rounding and
the scales' exact bits, :func:`exact_float_ops`), so results stay
comparable and the plan's activation grid is honoured; only the integer x integer product is
replaced by float x dequantised weight, and the dequantised weight is the same fp32 number
onnxruntime's DequantizeLinear makes (one correctly rounded ``float(code) * scale``). Each such
layer's manifest record says so in its ``reason``.

Kernel variant (:data:`WO_VARIANTS`), chosen explicitly and recorded in every layer's kernel name
(``wo_gemm_adreno.int4.fp32``) and in the build facts:

- ``fp32`` (default): fp32 activations, scales and accumulators, no ``half`` anywhere. It is the
  default because the adreno backend's graph is fp32 end to end today (nothing converts its
  activations to fp16) and because PoCL, the only OpenCL device here, has no ``cl_khr_fp16``: it is
  the variant ``banana verify`` can run. The plan's fp16 activation rounding (``Cast`` to float16
  and back in the QDQ graph) is then computed exactly in fp32 arithmetic
  (:func:`exact_float_ops`), so the artifact still computes what onnxruntime computes.
- ``fp16`` / ``fp16-acc32``: the device kernels (fp16 A tile and dequantised weights, fp16 or fp32
  accumulators; see ``kernels/NOTES_wo_gemm_adreno.md``), with casts at the layer boundary while
  the rest of the graph is fp32. Built, not executable on PoCL: the backend refuses to verify them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, te

from banana.compiler.errors import BadConfigError
from banana.compiler.passes.integer import IntegerLowering, LayerRecord, _im2col_te, lower_integer_regions
from banana.compiler.passes.integer_match import Region, Skipped

logger = logging.getLogger(__name__)

KERNEL = "wo_gemm_adreno"
VARIANT_ATTR = "banana.wo_variant"  # PrimFunc attribute: which variant a wo_gemm kernel was built as


@dataclass(frozen=True)
class WoVariant:
    """Dtypes of one build of the weight-only kernel."""

    name: str
    act: str
    scale: str
    accumulate: str
    runs_on_pocl: bool  # no ``half`` in its OpenCL C

    def to_json(self) -> dict[str, Any]:
        """As the manifest's build facts record it: ``variant`` (the name) and the dtypes."""
        out = dataclasses.asdict(self)
        out["variant"] = out.pop("name")
        return out


WO_VARIANTS: dict[str, WoVariant] = {
    "fp32": WoVariant("fp32", "float32", "float32", "float32", runs_on_pocl=True),
    "fp16": WoVariant("fp16", "float16", "float16", "float16", runs_on_pocl=False),
    "fp16-acc32": WoVariant("fp16-acc32", "float16", "float16", "float32", runs_on_pocl=False),
}
DEFAULT_WO_VARIANT = "fp32"


def wo_variant(name: str | None) -> WoVariant:
    """The variant called ``name`` (None: :data:`DEFAULT_WO_VARIANT`); unknown names are a BadConfigError."""
    key = DEFAULT_WO_VARIANT if name is None else name
    if key not in WO_VARIANTS:
        raise BadConfigError(f"weight-only kernel variant {name!r}; expected one of {', '.join(WO_VARIANTS)}")
    return WO_VARIANTS[key]


def as_weight_only(regions: Sequence[Region]) -> tuple[list[Region], dict[int, str]]:
    """Regions with quantized activations turned weight-only; ``index -> note`` for each one changed.

    The matcher left the layer's input as the ``DequantizeLinear`` output, so dropping ``act``
    makes the layer read the float fake-quantized activation, and dropping ``requant`` leaves the
    output ``QuantizeLinear`` in the graph (float fake-quant too).
    """
    out, notes = [], {}
    for r in regions:
        if r.act is None:
            out.append(r)
            continue
        notes[r.index] = (f"activation QDQ ({r.act[2]}) kept as float fake-quant ops: adreno runs float activations "
                          "with weight-only kernels")
        out.append(dataclasses.replace(r, act=None, requant=None))
    return out, notes


class AdrenoWeightOnly:
    """The weight-only hook of :func:`lower_integer_regions`: one ``wo_gemm_adreno`` call per layer.

    Called as ``hook(builder, region, x, params, out_shape) -> (expr of out_shape, LayerRecord)``
    with ``x`` the layer's float input and ``params`` its stored parameters (``w``, ``scale``,
    optional ``bias``, as :func:`banana.compiler.passes.integer.region_constants` makes them).
    """

    def __init__(self, target: tvm.target.Target, variant: WoVariant, notes: dict[int, str] | None = None) -> None:
        self.target = target
        self.variant = variant
        self.notes = notes or {}
        self.kernels: dict[tuple[int, ...], relax.GlobalVar] = {}

    def kernel(self, bb: relax.BlockBuilder, m: int, region: Region) -> relax.GlobalVar:
        from banana.kernels.wo_gemm_adreno import weight_only_gemm_primfunc

        v = self.variant
        key = (m, region.n, region.k, region.w_bits, region.k_group)
        if key not in self.kernels:
            func = weight_only_gemm_primfunc(m, region.n, region.k, target=self.target, w_bits=region.w_bits,
                                             group=region.k_group, act_dtype=v.act, accumulate=v.accumulate,
                                             scale_dtype=v.scale)
            symbol = f"banana_wo_gemm_{len(self.kernels)}_{m}x{region.n}x{region.k}_i{region.w_bits}"
            # op_pattern kOpaque (8): FuseOps must keep the scheduled kernel whole
            func = func.with_attr("global_symbol", symbol).with_attr("op_pattern", 8).with_attr(VARIANT_ATTR, v.name)
            self.kernels[key] = bb.add_func(func, symbol)
        return self.kernels[key]

    def __call__(self, bb: relax.BlockBuilder, region: Region, x: relax.Expr, params: dict[str, relax.Var],
                 out_shape: list[int]) -> tuple[relax.Expr, LayerRecord]:
        v = self.variant
        if region.conv is not None:  # float im2col: [b*oh*ow, c*kh*kw], k in the weight's (c, kh, kw) order
            a = bb.emit_te(_im2col_te, x, region.conv, 0, primfunc_name_hint="im2col")
            b, _, oh, ow = out_shape
            m = b * oh * ow
        else:
            m = int(np.prod(out_shape[:-1]))
            a = bb.emit(relax.op.reshape(x, [m, region.k]))
        scale: relax.Expr = params["scale"]
        if v.act != "float32":
            a = bb.emit(relax.op.astype(a, v.act))
        if v.scale != "float32":
            scale = bb.emit(relax.op.astype(scale, v.scale))
        gvar = self.kernel(bb, m, region)
        y = bb.emit(relax.call_tir(gvar, [a, params["w"], scale], relax.TensorType([m, region.n], v.act)))
        if v.act != "float32":
            y = bb.emit(relax.op.astype(y, "float32"))
        if "bias" in params:
            y = bb.emit(relax.op.add(y, params["bias"]))
        if region.conv is not None:
            b, _, oh, ow = out_shape
            y = bb.emit(relax.op.reshape(y, [b, oh, ow, region.n]))
            result: relax.Expr = relax.op.permute_dims(y, [0, 3, 1, 2])
        else:
            result = relax.op.reshape(y, out_shape)
        record = LayerRecord(region.node, region.op, f"int{region.w_bits}", "float32",
                             f"{KERNEL}.int{region.w_bits}.{v.name}", "weight-only", m, region.n, region.k,
                             region.k_group, reason=self.notes.get(region.index))
        return result, record


# -- fp16 activation rounding without half -----------------------------------------------------------------

def round_to_fp16_te(x: te.Tensor) -> te.Tensor:
    """``float32(float16(x))`` (round to nearest even) in uint32 arithmetic on the float's bits.

    Normal fp16 range: add half an fp16 ulp (plus the kept lsb, for ties to even) to the fp32 bits
    and clear the 13 bits fp16 lacks. Below 2**-14 (fp16 subnormals, quantum 2**-24): the 24-bit
    significand is shifted right to units of 2**-24 with the same round-half-even rule, and the
    integer result ``q`` is scaled back as ``float(q)`` with 24 taken off its exponent. From 65520
    up: +-inf; NaN stays NaN. Why integers: TVM prints OpenCL float literals with 7 significant
    digits (2**24 becomes ``1.677722e+07f``) and simplifies ``(a + 0.5) - 0.5`` to ``a``, so the
    usual float tricks are not exact in the emitted OpenCL C.
    """
    u32 = "uint32"

    def c(v: int) -> tvm.tirx.PrimExpr:
        return tvm.tirx.const(v, u32)

    def f32(u: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        return tvm.tirx.reinterpret("float32", u)

    def rshift_even(v: tvm.tirx.PrimExpr, shift: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        """round-half-even(v / 2**shift) for 1 <= shift <= 31 and v < 2**24."""
        keep = tvm.tirx.bitwise_and(tvm.tirx.shift_right(v, shift), c(1))
        return tvm.tirx.shift_right(v + (tvm.tirx.shift_left(c(1), shift - c(1)) - c(1)) + keep, shift)

    def body(*i: Any) -> Any:
        bits = tvm.tirx.reinterpret(u32, x(*i))
        sign = tvm.tirx.bitwise_and(bits, c(0x80000000))
        mag = tvm.tirx.bitwise_and(bits, c(0x7FFFFFFF))
        lsb = tvm.tirx.bitwise_and(tvm.tirx.shift_right(bits, c(13)), c(1))
        normal = f32(tvm.tirx.bitwise_and(bits + c(0xFFF) + lsb, c(0xFFFFE000)))
        exp = tvm.tirx.shift_right(mag, c(23))
        sig = tvm.tirx.bitwise_and(mag, c(0x7FFFFF)) + tvm.tirx.Select(exp > c(0), c(0x800000), c(0))
        # |x| = sig * 2**(max(exp, 1) - 150) -> units of 2**-24: shift right by 126 - max(exp, 1) (>= 14 here)
        shift = tvm.tirx.min(c(126) - tvm.tirx.max(exp, c(1)), c(31))
        q = rshift_even(sig, shift)
        q_bits = tvm.tirx.reinterpret(u32, q.astype("float32")) - c(24 << 23)
        tiny = f32(tvm.tirx.bitwise_or(tvm.tirx.Select(q > c(0), q_bits, c(0)), sign))
        inf = f32(tvm.tirx.bitwise_or(sign, c(0x7F800000)))
        rounded = tvm.tirx.if_then_else(mag < c(0x38800000), tiny,  # |x| < 2**-14
                                        tvm.tirx.if_then_else(mag >= c(0x477FF000), inf, normal))  # |x| >= 65520
        return tvm.tirx.if_then_else(mag > c(0x7F800000), x(*i), rounded)  # NaN

    return te.compute(x.shape, body, name="round_to_fp16")


def _scale_bits(scale: float) -> tvm.tirx.PrimExpr:
    """An fp32 scale as its bit pattern: exact in the emitted OpenCL C (see :func:`round_to_fp16_te`)."""
    return tvm.tirx.reinterpret("float32", tvm.tirx.const(int(np.float32(scale).view(np.uint32)), "uint32"))


def quantize_exact_te(x: te.Tensor, scale: float, zp: int, dtype: str) -> te.Tensor:
    """ONNX QuantizeLinear, ``saturate(rint(x / scale) + zp)`` -- the arithmetic of
    :func:`banana.compiler.passes.integer._quantize_te` -- with the scale passed by its bits."""
    from banana.compiler.quantize.integer_reference import INT_RANGES

    lo, hi = INT_RANGES[dtype]
    f32 = "float32"

    def body(*i: Any) -> Any:
        v = tvm.tirx.nearbyint(x(*i) / _scale_bits(scale)) + tvm.tirx.const(float(zp), f32)
        return te.max(te.min(v, tvm.tirx.const(float(hi), f32)), tvm.tirx.const(float(lo), f32)).astype(dtype)

    return te.compute(x.shape, body, name="quantize_onnx")


def dequantize_exact_te(q: te.Tensor, scale: float, zp: int) -> te.Tensor:
    """ONNX DequantizeLinear, ``float(q - zp) * scale``, with the scale passed by its bits."""
    return te.compute(q.shape, lambda *i: (q(*i).astype("int32") - zp).astype("float32") * _scale_bits(scale),
                      name="dequantize_onnx")


def _per_tensor(call: relax.Call) -> tuple[float, int] | None:
    """``(scale, zero point)`` of a quantize/dequantize with constant per-tensor parameters."""
    from banana.compiler.passes.integer import _const_value

    scale, zp = call.args[1:3]
    if not isinstance(scale, tvm.ir.GenericConst) or not isinstance(zp, tvm.ir.GenericConst):
        return None
    s, z = _const_value(scale), _const_value(zp)
    if s.size != 1 or z.size != 1:
        return None
    return float(s.reshape(-1)[0]), int(z.reshape(-1)[0])


def _is_op(value: Any, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def _astype_to(value: Any, dtype: str) -> bool:
    return _is_op(value, "relax.astype") and str(value.attrs.dtype) == dtype


@relax.expr_functor.mutator
class _ExactFloatOps(relax.PyExprMutator):
    """Per-tensor quantize/dequantize -> the ``*_exact_te`` kernels; optionally fp16 round trips ->
    :func:`round_to_fp16_te`."""

    def __init__(self, mod: tvm.IRModule, fp16_round_trips: bool) -> None:
        super().__init__(mod)
        self.bound: dict[relax.Var, relax.Expr] = {}
        self.fp16_round_trips = fp16_round_trips
        self.counts = {"quantize": 0, "dequantize": 0, "fp16_round_trip": 0}

    def _replace(self, var: relax.Var, new: relax.Expr, kind: str) -> None:
        if not isinstance(var, relax.DataflowVar):
            new = self.builder_.emit_output(new, var.name)
        self.set_var_remap(var, new)
        self.counts[kind] += 1

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        from banana.compiler.quantize.integer_reference import INT_RANGES

        var, value = binding.var, binding.value
        self.bound[var] = value
        bb = self.builder_
        if _is_op(value, "relax.quantize") and str(value.args[0].ty.dtype) == "float32" \
                and str(value.ty.dtype) in INT_RANGES:
            qp = _per_tensor(value)
            if qp is not None:
                new = bb.emit_te(quantize_exact_te, self.visit_expr(value.args[0]), *qp, str(value.ty.dtype),
                                 primfunc_name_hint="quantize_onnx")
                return self._replace(var, new, "quantize")
        if _is_op(value, "relax.dequantize") and str(value.ty.dtype) == "float32" \
                and str(value.args[0].ty.dtype) in INT_RANGES:
            qp = _per_tensor(value)
            if qp is not None:
                new = bb.emit_te(dequantize_exact_te, self.visit_expr(value.args[0]), *qp,
                                 primfunc_name_hint="dequantize_onnx")
                return self._replace(var, new, "dequantize")
        if self.fp16_round_trips and _astype_to(value, "float32") and isinstance(value.args[0], relax.Var):
            src = self.bound.get(value.args[0])
            if _astype_to(src, "float16") and str(src.args[0].ty.dtype) == "float32":
                new = bb.emit_te(round_to_fp16_te, self.visit_expr(src.args[0]), primfunc_name_hint="round_to_fp16")
                return self._replace(var, new, "fp16_round_trip")
        super().visit_var_binding_(binding)
        return None


def exact_float_ops(mod: tvm.IRModule, *, fp16_round_trips: bool) -> tuple[tvm.IRModule, dict[str, int]]:
    """Rewrite ``main``'s activation fake-quant ops so that OpenCL C computes them as onnxruntime does.

    - per-tensor ``quantize``/``dequantize``: TVM's legaliser would print the scale as a 7-digit
      float literal (not the fp32 scale; measured: 1.4 vs 0.4 output steps from onnxruntime on
      the nano DiT's W8A8 plan) and round half away from zero; here ONNX's rounding and the
      scale's exact bits;
    - with ``fp16_round_trips``, every ``astype(astype(x: float32, float16), float32)`` (the QDQ
      export's fp16 activations): OpenCL C without ``cl_khr_fp16`` (PoCL) cannot declare a
      ``half`` value, and dropping the pair would change the numbers.

    Returns the module and how many of each were rewritten.
    """
    rewriter = _ExactFloatOps(mod, fp16_round_trips)
    gvar = mod.get_global_var("main")
    new_func = rewriter.visit_expr(mod["main"])
    rewriter.builder_.update_func(gvar, new_func)
    out = relax.transform.DeadCodeElimination(["main"])(rewriter.builder_.get())
    return relax.transform.Normalize()(out), rewriter.counts


def lower_adreno_regions(mod: tvm.IRModule, weight_names: Sequence[str], weights: Sequence[np.ndarray],
                         regions: Sequence[Region], target: tvm.target.Target | dict[str, Any], *,
                         skipped: Sequence[Skipped] = (), taps: bool = False,
                         variant: str | None = None) -> IntegerLowering:
    """Every region -> ``wo_gemm_adreno`` (weight-only; W8A8 activations stay float fake-quant)."""
    if isinstance(target, dict):
        target = tvm.target.Target(target)
    v = wo_variant(variant)
    converted, notes = as_weight_only(regions)
    if notes:
        logger.info("%d W8A8 layers run weight-only on adreno; their activation QDQ stays float fake-quant", len(notes))
    mod, counts = exact_float_ops(mod, fp16_round_trips=v.runs_on_pocl)
    logger.info("adreno weight-only variant %s %s; float fake-quant ops made exact: %s", v.name, v.to_json(), counts)
    hook = AdrenoWeightOnly(target, v, notes)
    return lower_integer_regions(mod, weight_names, weights, converted, target, skipped=skipped, taps=taps,
                                 weight_only=hook)
