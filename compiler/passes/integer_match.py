"""Find quantized layers in a QDQ ONNX graph and cut them out before TVM imports it.

Why on the ONNX graph and not on Relax: banana's importer constant-folds the graph with
onnxscript first, which turns some ``DequantizeLinear(int8 initializer)`` weights into float
initializers -- the integer codes are gone before any Relax pass could see them -- and ONNX node
names are what a user recognises in an error message. So the regions are matched here, their
integer weights, scales and zero points are read into :class:`Region` records, and each region's
compute is replaced by a *placeholder* (``MatMul``/``Conv`` against a float initializer named
``banana_int_<i>``) that the importer turns into one recognisable Relax call. The Relax pass
(:mod:`banana.compiler.passes.integer`) swaps each placeholder for the integer kernel and its
epilogue. The weight DequantizeLinear nodes become dead and are removed, so no float copy of a
quantized weight reaches the artifact.

Recognised (as exporters emit them):

- ``DQ(act: uint8/int8/uint16/int16, per tensor) -> MatMul | Gemm(transA=0, alpha=beta=1) | Conv(2-D,
  group 1, dilation 1)`` (16-bit activations only while ``k`` cannot overflow int32 sums, see
  :func:`banana.kernels.int_gemm.max_exact_k`) with the
  weight from ``DQ(int8/int4 initializer)`` (per tensor, per channel or block-wise), or from
  banana's compatibility form ``Cast(int8) -> Mul(block scale) -> Reshape``;
- a bias: Gemm/Conv's third input, or an ``Add`` of a ``[N]`` float initializer right after a
  MatMul (torch exports split Linear that way); a bias may itself be ``DQ(int32)``;
- an output ``QuantizeLinear`` consuming the region (onnxruntime's QDQ form): the region then
  requantizes in integer arithmetic and the next layer takes its integer output directly;
- weight-only: a float activation into a ``DQ(weight)`` layer.

Per-step scales (banana's multi-step export, :mod:`banana.compiler.quantize.qdq`): an activation
or output scale / zero point may be ``Gather(constant table [S], step)`` with ``step`` an int64
scalar graph input; the region then records the tables (``act_table``/``requant_table``) and the
Relax pass selects the step's row at run time. A ``Gather`` with a constant index is a constant.
Such a stepped activation's ``Q -> DQ`` pair is bypassed (the placeholder reads the float tensor
and the region quantizes it with the step's scale), so no gathered-scale ``quantize`` has to be
lowered by TVM, whose legaliser rounds half away from zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "banana_int_"
_ACT_DTYPES = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8", TensorProto.UINT16: "uint16",
               TensorProto.INT16: "int16"}


class NotInteger(Exception):
    """A quantized layer that cannot become an integer region (the message says why)."""


@dataclass
class Region:
    """One quantized layer, in the canonical form the Relax pass emits.

    ``w``: integer weight codes ``[n, k]`` (int8, values in [-8, 7] when ``w_bits == 4``);
    ``sw``: weight scales ``[n]`` or ``[n, k // k_group]``; ``act``: quantized input
    ``(scale, zero_point, dtype)`` or None for weight-only; ``requant``: output ``(scale, zp, dtype)``.
    """

    index: int
    node: str
    op: str
    n: int
    k: int
    w: np.ndarray
    sw: np.ndarray
    k_group: int
    act: tuple[float, int, str] | None
    bias: np.ndarray | None = None
    requant: tuple[float, int, str] | None = None
    conv: dict[str, Any] | None = None  # kernel, strides, pads for Conv
    output: str = ""  # the ONNX tensor the placeholder produces
    # per-step tables (scale float32 [S], zero point int64 [S]) when the scales are gathered by ``step``;
    # ``act``/``requant`` then hold step 0's values (dtype, shapes and checks are the same for every step)
    act_table: tuple[np.ndarray, np.ndarray] | None = None
    requant_table: tuple[np.ndarray, np.ndarray] | None = None
    step_input: str | None = None

    @property
    def steps(self) -> int:
        """Number of per-step rows (0: constant scales)."""
        tables = [t for t in (self.act_table, self.requant_table) if t is not None]
        return int(tables[0][0].shape[0]) if tables else 0

    def at_step(self, step: int) -> Region:
        """This region with step ``step``'s constant scales (what a ``model.step{i}`` graph would give)."""
        import dataclasses

        act, requant = self.act, self.requant
        if self.act_table is not None and act is not None:
            act = (float(self.act_table[0][step]), int(self.act_table[1][step]), act[2])
        if self.requant_table is not None and requant is not None:
            requant = (float(self.requant_table[0][step]), int(self.requant_table[1][step]), requant[2])
        return dataclasses.replace(self, act=act, requant=requant, act_table=None, requant_table=None,
                                   step_input=None)

    @property
    def placeholder(self) -> str:
        return f"{PLACEHOLDER_PREFIX}{self.index}"

    @property
    def w_bits(self) -> int:
        return 4 if self.w.size and int(self.w.min()) >= -8 and int(self.w.max()) <= 7 else 8


@dataclass
class Skipped:
    node: str
    op: str
    reason: str


@dataclass
class IntegerMatch:
    model: onnx.ModelProto
    regions: list[Region] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.outputs = {o.name for o in model.graph.output}
        inits = {t.name for t in model.graph.initializer}
        self.graph_inputs = {i.name: i for i in model.graph.input if i.name not in inits}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer, a Constant node's output, or a Gather of those by a constant index."""
        if name in self.inits:
            return _to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return _to_array(a.t)
        if node is not None and node.op_type == "Gather" and node.input[0] != name:
            data, index = self.const(node.input[0]), self.const(node.input[1])
            if data is not None and index is not None and np.issubdtype(index.dtype, np.integer):
                try:
                    return np.take(data, index, axis=int(_attrs(node).get("axis", 0)))
                except IndexError:
                    raise NotInteger(f"'{name}': Gather index {index.tolist()} is out of range") from None
        return None

    def step_table(self, name: str) -> tuple[np.ndarray, str] | None:
        """``(table [S], step input name)`` when ``name`` is ``Gather(constant 1-D table, scalar graph input)``."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Gather" or int(_attrs(node).get("axis", 0)) != 0:
            return None
        table = self.const(node.input[0])
        index = node.input[1]
        if table is None or table.ndim != 1 or index not in self.graph_inputs:
            return None
        info = self.graph_inputs[index]
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.elem_type not in (TensorProto.INT64, TensorProto.INT32) or len(dims) != 0:
            raise NotInteger(f"'{name}' is gathered by input '{index}', which is not an int64 scalar")
        return table, index

    def dtype(self, name: str) -> int | None:
        node = self.producer.get(name)
        if node is not None and node.op_type == "Gather":  # a table row: the table's type
            return self.dtype(node.input[0])
        if name in self.inits:
            return self.inits[name].data_type
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return next(a.t.data_type for a in node.attribute if a.name == "value")
        return None

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _to_array(t: onnx.TensorProto) -> np.ndarray:
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return numpy_helper.to_array(t).astype(np.int8)
    return numpy_helper.to_array(t)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _scalar(g: _Graph, name: str, what: str) -> float | int:
    v = g.const(name)
    if v is None or v.size != 1:
        raise NotInteger(f"{what} '{name}' is not a per-tensor constant")
    return v.reshape(-1)[0].item()


def _scalar_or_table(g: _Graph, name: str, what: str) -> tuple[float | int, np.ndarray | None, str | None]:
    """``(step 0 value, per-step table or None, step input or None)`` of a per-tensor scale or zero point."""
    found = g.step_table(name)
    if found is not None:
        table, step = found
        if table.size == 0:
            raise NotInteger(f"{what} '{name}' is gathered from an empty table")
        return table[0].item(), table, step
    return _scalar(g, name, what), None, None


def _qparams(g: _Graph, node: onnx.NodeProto, what: str
             ) -> tuple[tuple[float, int, str], tuple[np.ndarray, np.ndarray] | None, str | None]:
    """``((scale, zp, dtype), tables or None, step input)`` of a per-tensor Q/DQ node (step 0's values)."""
    scale, s_table, s_step = _scalar_or_table(g, node.input[1], f"{what} scale")
    if len(node.input) > 2 and node.input[2]:
        zp, z_table, z_step = _scalar_or_table(g, node.input[2], f"{what} zero point")
        dtype = _ACT_DTYPES.get(g.dtype(node.input[2]) or -1)
        if dtype is None:  # zero point is a computed tensor: dtype unknown here
            raise NotInteger(f"{what} zero point '{node.input[2]}' has an unsupported type")
    else:
        zp, z_table, z_step, dtype = 0, None, None, "uint8"
    if s_table is None and z_table is None:
        return (float(np.float32(scale)), int(zp), dtype), None, None
    if s_step is not None and z_step is not None and s_step != z_step:
        raise NotInteger(f"{what} scale and zero point are gathered by different inputs ('{s_step}', '{z_step}')")
    steps = int((s_table if s_table is not None else z_table).shape[0])
    st = s_table.astype(np.float32) if s_table is not None else np.full(steps, scale, np.float32)
    zt = z_table.astype(np.int64) if z_table is not None else np.full(steps, int(zp), np.int64)
    if st.shape != (steps,) or zt.shape != (steps,):
        raise NotInteger(f"{what} scale table {st.shape} and zero point table {zt.shape} differ in length")
    return (float(st[0]), int(zt[0]), dtype), (st, zt), s_step or z_step


def _activation(g: _Graph, name: str
                ) -> tuple[str, tuple[float, int, str], tuple[np.ndarray, np.ndarray] | None, str | None] | None:
    """``(quantized tensor, (scale, zp, dtype), per-step tables, step input)`` when ``name`` is a per-tensor
    DQ output, else None."""
    dq = g.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is not None:
        return None
    params, tables, step = _qparams(g, dq, "activation")
    return dq.input[0], params, tables, step


def _weight_dq(g: _Graph, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """``(codes, scale, zero_point, axis, block)`` of a constant weight behind ``name``, or None."""
    node = g.producer.get(name)
    if node is None:
        return None
    if node.op_type == "DequantizeLinear":
        codes = g.const(node.input[0])
        if codes is None:
            return None
        scale = g.const(node.input[1])
        if scale is None:
            raise NotInteger(f"weight scale '{node.input[1]}' is not constant")
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int8)
        if zp is None:
            raise NotInteger(f"weight zero point '{node.input[2]}' is not constant")
        a = _attrs(node)
        return codes, scale.astype(np.float32), zp, int(a.get("axis", 1)), int(a.get("block_size", 0))
    if node.op_type == "Reshape":  # banana's compatibility form: Reshape(Mul(Cast(int8 codes), scale))
        mul = g.producer.get(node.input[0])
        if mul is None or mul.op_type != "Mul":
            return None
        cast = g.producer.get(mul.input[0])
        if cast is None or cast.op_type != "Cast":
            return None
        c3, s3 = g.const(cast.input[0]), g.const(mul.input[1])
        shape = g.const(node.input[1])
        if c3 is None or s3 is None or shape is None or c3.dtype != np.int8 or c3.ndim != 3:
            return None
        if s3.shape[1] == 1:  # [G, 1, N] over codes [G, B, N]: MatMul weight [K, N], blocked along K
            codes = c3.reshape(-1, c3.shape[2])
            return codes, s3[:, 0, :].astype(np.float32), np.zeros(1, np.int8), 0, c3.shape[1]
        if s3.shape[2] == 1:  # [N, G, 1] over [N, G, B]: Gemm weight [N, K]
            codes = c3.reshape(c3.shape[0], -1)
            return codes, s3[:, :, 0].astype(np.float32), np.zeros(1, np.int8), 1, c3.shape[2]
    return None


def _canonical_weight(dq: tuple[np.ndarray, np.ndarray, np.ndarray, int, int], k_axis: int
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(w [n, k] int8, sw [n] or [n, g], k_group)`` from DQ data of a 2-D weight whose K axis is ``k_axis``."""
    codes, scale, zp, axis, block = dq
    if np.any(zp != 0):
        raise NotInteger("weight zero point is not 0 (asymmetric weights are not supported)")
    if codes.dtype not in (np.int8,):
        raise NotInteger(f"weight codes are {codes.dtype}; int8/int4 expected")
    w = codes if k_axis == 1 else codes.T
    n, k = w.shape
    if block:
        sw = scale if k_axis == 1 else scale.T  # scale [n, g]
        if sw.shape != (n, k // block) or k % block:
            raise NotInteger(f"block scales {scale.shape} do not fit weight {codes.shape} with block {block}")
        return np.ascontiguousarray(w, np.int8), np.ascontiguousarray(sw, np.float32), block
    if scale.size == 1:
        sw = np.full(n, scale.reshape(-1)[0], np.float32)
    elif scale.size == n and axis % 2 != k_axis:
        sw = scale.reshape(n).astype(np.float32)
    else:
        raise NotInteger(f"weight scale shape {scale.shape} (axis {axis}) is not per tensor or per output channel")
    return np.ascontiguousarray(w, np.int8), sw, 0


def _bias(g: _Graph, name: str) -> np.ndarray | None:
    v = g.const(name)
    if v is not None:
        return v.astype(np.float32).reshape(-1)
    node = g.producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        q, s = g.const(node.input[0]), g.const(node.input[1])
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
        if q is not None and s is not None and zp is not None:
            return ((q.astype(np.float64) - np.asarray(zp, np.float64)) * s.astype(np.float64)).astype(np.float32)
    raise NotInteger(f"bias '{name}' is not a constant")


def _match_node(g: _Graph, node: onnx.NodeProto, index: int) -> tuple[Region, list[onnx.NodeProto]] | None:
    """A Region for ``node`` (None when it is not a quantized layer); raises NotInteger when it is one we cannot run."""
    op = node.op_type
    wdq_raw = _weight_dq(g, node.input[1])
    act = _activation(g, node.input[0])
    if wdq_raw is None:
        if act is not None and g.const(node.input[1]) is None and g.producer.get(node.input[1]) is not None \
                and g.producer[node.input[1]].op_type == "DequantizeLinear":
            raise NotInteger("both operands are quantized activations (activation x activation is not supported)")
        return None
    a = _attrs(node)
    conv = None
    if op == "MatMul":
        k_axis = 0
    elif op == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise NotInteger("Gemm with transA or alpha/beta != 1")
        k_axis = 1 if a.get("transB", 0) else 0
    else:  # Conv
        codes = wdq_raw[0]
        if codes.ndim != 4 or a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])) \
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise NotInteger("only 2-D Conv with group 1, dilation 1 and explicit pads is supported")
        kh, kw = codes.shape[2:]
        conv = {"kernel": (int(kh), int(kw)), "strides": tuple(int(s) for s in a.get("strides", [1, 1])),
                "pads": tuple(int(p) for p in a.get("pads", [0, 0, 0, 0])), "channels": int(codes.shape[1])}
        codes = codes.reshape(codes.shape[0], -1)
        scale = wdq_raw[1]
        if wdq_raw[4] or scale.size not in (1, codes.shape[0]):
            raise NotInteger("Conv weight scales must be per tensor or per output channel")
        wdq_raw = (codes, scale.reshape(-1), wdq_raw[2], 0, 0)
        k_axis = 1
    if op != "Conv" and wdq_raw[0].ndim != 2:
        raise NotInteger(f"weight of rank {wdq_raw[0].ndim}; 2-D expected")
    w, sw, k_group = _canonical_weight(wdq_raw, k_axis)
    n, k = w.shape
    if act is not None:  # int32 sums of int16 x int8 products can overflow on long k: worst case, not data
        from banana.kernels.int_gemm import max_exact_k

        w_bits = 4 if w.size and int(w.min()) >= -8 and int(w.max()) <= 7 else 8
        zps = sorted({int(z) for z in act[2][1]}) if act[2] is not None else [act[1][1]]
        for zp_a in zps:  # every step's zero point
            limit = max_exact_k(act[1][2], w_bits, zero_point=zp_a)
            if (k_group or k) > limit:
                raise NotInteger(f"{act[1][2]} activations (zero point {zp_a}) x int{w_bits} weights summed over "
                                 f"k={k_group or k} can overflow int32 (at most {limit} in the worst case)")
    bias = None
    absorbed: list[onnx.NodeProto] = []
    if op in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2]:
        bias = _bias(g, node.input[2])
    out = node.output[0]
    if op == "MatMul":
        user = g.single_consumer(out)
        if user is not None and user.op_type == "Add":
            other = user.input[1] if user.input[0] == out else user.input[0]
            value = g.const(other)
            if value is not None and value.dtype == np.float32 and value.size == n and value.shape[-1] == n:
                bias, out = value.reshape(n), user.output[0]
                absorbed.append(user)
    if bias is not None and bias.size != n:
        raise NotInteger(f"bias of {bias.size} values for {n} output channels")
    requant = None
    requant_table = None
    step_input = act[3] if act is not None else None
    user = g.single_consumer(out)
    if act is not None and k_group == 0 and user is not None and user.op_type == "QuantizeLinear" \
            and _attrs(user).get("axis", 1) in (0, 1):
        try:
            params, tables, q_step = _qparams(g, user, "output")
        except NotInteger:
            params, tables, q_step = None, None, None
        steps = act[2][0].shape[0] if act[2] is not None else None
        fits = q_step is None or step_input is None or q_step == step_input
        if tables is not None and steps is not None and tables[0].shape[0] != steps:
            fits = False
        if params is not None and fits and params[2] in ("uint8", "int8", "uint16", "int16"):
            requant, requant_table = params, tables
            step_input = step_input or q_step
    if step_input is not None:  # every table of a region indexes the same steps
        n_steps = [t[0].shape[0] for t in (act[2] if act else None, requant_table) if t is not None]
        if len(set(n_steps)) > 1:
            raise NotInteger(f"per-step tables of different lengths {sorted(set(n_steps))}")
    region = Region(index=index, node=node.name or out, op=op, n=n, k=k, w=w, sw=sw, k_group=k_group,
                    act=act[1] if act else None, bias=bias, requant=requant, conv=conv, output=out,
                    act_table=act[2] if act else None, requant_table=requant_table, step_input=step_input)
    return region, absorbed


def _placeholder(region: Region, node: onnx.NodeProto, act_input: str) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    """The stand-in node: same input, same output name and shape, weights a unique float initializer."""
    if region.conv is not None:
        kh, kw = region.conv["kernel"]
        shape = (region.n, region.conv["channels"], kh, kw)
    else:
        shape = (region.k, region.n)
    value = np.zeros(shape, np.float32)
    value.reshape(-1)[0] = region.index + 1  # distinct values: no optimizer may merge two placeholders
    init = numpy_helper.from_array(value, region.placeholder)
    if region.conv is not None:
        attrs = {"kernel_shape": list(region.conv["kernel"]), "strides": list(region.conv["strides"]),
                 "pads": list(region.conv["pads"])}
        new = helper.make_node("Conv", [act_input, region.placeholder], [region.output],
                               name=f"{region.placeholder}.{node.name}", **attrs)
    else:
        new = helper.make_node("MatMul", [act_input, region.placeholder], [region.output],
                               name=f"{region.placeholder}.{node.name}")
    return new, init


def _stepped_source(g: _Graph, dq_output: str, requantized: set[str]) -> str:
    """The float tensor behind ``Q(x) -> DQ`` with gathered per-step scales, else ``dq_output`` itself.

    Why bypass: the region quantizes ``x`` itself with the step's row of its table (the same ONNX
    arithmetic), so the gathered-scale pair -- which TVM would legalise with its own rounding -- is
    dead and removed. Kept when ``x`` is a requantizing region's output (the pair is then absorbed
    by that region's integer epilogue, as with constant scales).
    """
    dq = g.producer.get(dq_output)
    q = g.producer.get(dq.input[0]) if dq is not None else None
    if q is None or q.op_type != "QuantizeLinear" or q.input[0] in requantized:
        return dq_output
    if len(g.consumers.get(q.output[0], [])) != 1 or q.output[0] in g.outputs:
        return dq_output
    if (q.input[1], q.input[2] if len(q.input) > 2 else "") != (dq.input[1], dq.input[2] if len(dq.input) > 2 else ""):
        return dq_output  # Q and DQ disagree on their parameters: not a plain fake-quant pair
    return q.input[0]


def _remove_dead(model: onnx.ModelProto) -> None:
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def match_integer_regions(model: onnx.ModelProto, *, allow_float_fallback: bool = False) -> IntegerMatch:
    """Rewrite every quantized layer of ``model`` (a copy) into a placeholder; returns the regions.

    A quantized layer that cannot become an integer region raises UnsupportedOpError naming its
    node, unless ``allow_float_fallback`` (then it stays in float and is listed in ``skipped``).
    """
    from banana.compiler.errors import UnsupportedOpError

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    result = IntegerMatch(model=out)
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    requantized: set[str] = set()  # region outputs that requantize in integer arithmetic
    for node in out.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        try:
            found = _match_node(g, node, len(result.regions))
        except NotInteger as reason:
            if not allow_float_fallback:
                raise UnsupportedOpError(
                    f"quantized layer '{node.name}' ({node.op_type}) cannot run in integer arithmetic: {reason} "
                    "(--allow-float-fallback runs it in float and lists it in the manifest)") from None
            logger.warning("quantized layer '%s' falls back to float: %s", node.name, reason)
            result.skipped.append(Skipped(node.name, node.op_type, str(reason)))
            continue
        if found is None:
            continue
        region, absorbed = found
        act_input = node.input[0]
        if region.act_table is not None:
            act_input = _stepped_source(g, node.input[0], requantized)
        if region.requant is not None:
            requantized.add(region.output)
        new, init = _placeholder(region, node, act_input)
        replace[id(node)] = new
        drop.update(id(n) for n in absorbed)
        out.graph.initializer.append(init)
        result.regions.append(region)
    nodes = [replace.get(id(n), n) for n in out.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    _remove_dead(out)
    logger.info("integer regions: %d matched, %d left in float", len(result.regions), len(result.skipped))
    return result
