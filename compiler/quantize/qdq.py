"""Export a :class:`~.fakequant.QuantDenoiser` as standard QDQ ONNX (opset 21).

The float model is exported with the project's own exporter (:func:`banana.compiler.zoo.
export_onnx`), then every quantized layer is rewritten in place: its weight initializer becomes
integer codes (``INT8``, or ``INT4`` per channel or block-wise via opset 21's ``block_size``)
feeding a ``DequantizeLinear``; FP16 weights become a float16 initializer and a ``Cast``; its
activation input gets ``QuantizeLinear -> DequantizeLinear`` (``UINT8``/``UINT16`` with zero
point) or a Cast pair for FP16. The codes and scales are exactly the simulation's, so
onnxruntime and torch agree to within one quantization step (rounding ties, float order).

Per-step activation scales -- the choice and why:

* ``step=None`` (default): **one graph with a scale table**. A fourth input ``step`` (int64
  scalar, 0-based sampling step) ``Gather``\\ s each activation's scale and zero point from a
  ``[S]`` table, so one file with one copy of the weights serves every step.
* ``step=i``: **one graph per step**, scales as constants, same three inputs as the float model.
  Compilers that legalise QDQ with constant scales (TVM's importer, hence ``banana compile``) and
  tools that expect a plain denoiser signature take these.

Layers are matched to ONNX nodes by their weight's bytes (``W`` for Gemm/Conv, ``W^T`` for
MatMul), not by names, since exporters rename and transpose initializers.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.errors import BadModelError
from banana.compiler.quantize.fakequant import QuantDenoiser, QuantLayer

log = logging.getLogger(__name__)

QDQ_OPSET = 21
STEP_INPUT = "step"
_ACT_TYPES = {8: TensorProto.UINT8, 16: TensorProto.UINT16}
_ACT_NP = {8: np.uint8, 16: np.uint16}


def _digest(a: np.ndarray) -> tuple[tuple[int, ...], str]:
    return tuple(a.shape), hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


def find_layer_nodes(model: onnx.ModelProto, layers: dict[str, np.ndarray]) -> dict[str, tuple[onnx.NodeProto, bool]]:
    """``layer -> (node, transposed)`` for each torch weight ``[N, ...]``, matched by value."""
    by_digest = {}
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            by_digest[_digest(numpy_helper.to_array(t))] = t.name
    consumers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1:
            consumers.setdefault(node.input[1], node)
    found = {}
    for name, w in layers.items():
        for arr, transposed in ((w, False), (w.reshape(w.shape[0], -1).T, True)):
            init = by_digest.get(_digest(arr))
            if init is not None and init in consumers:
                node = consumers[init]
                if node.op_type == "Gemm":
                    tb = next((a.i for a in node.attribute if a.name == "transB"), 0)
                    if bool(tb) == transposed:
                        continue
                found[name] = (node, transposed)
                break
        else:
            raise BadModelError(f"quantized layer {name!r}: no MatMul/Gemm/Conv with its weight in the exported graph")
    return found


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, array: np.ndarray, dtype: int | None = None) -> str:
        if dtype is None:
            self.inits.append(numpy_helper.from_array(array, name))
        else:  # int4 codes: helper packs them
            self.inits.append(helper.make_tensor(name, dtype, array.shape, array.flatten().tolist()))
        return name


def _weight_qdq(b: _Builder, name: str, layer: QuantLayer, node: onnx.NodeProto, transposed: bool,
                int4_as_int8: bool = False) -> None:
    old = node.input[1]
    w = layer.inner.weight.detach().float()
    shape = tuple(w.shape)
    if layer.wq is None:
        if layer.precision.weight == "fp16":
            arr = w.numpy().reshape(shape)
            arr = arr.reshape(arr.shape[0], -1).T if transposed else arr
            src = b.init(f"{name}.weight_fp16", arr.astype(np.float16))
            b.nodes.append(helper.make_node("Cast", [src], [f"{name}.weight_dq"], to=TensorProto.FLOAT,
                                            name=f"{name}.weight_cast"))
            node.input[1] = f"{name}.weight_dq"
        return
    wq = layer.wq
    codes = wq.integer(w.reshape(shape[0], -1)).detach().numpy().astype(np.int8)  # [N, K]
    scale = torch.clamp(wq.scale, min=1e-8).detach().numpy().astype(np.float32)  # [N, G]
    blocked = wq.block > 0
    packed = wq.bits == 4 and not int4_as_int8
    dtype = TensorProto.INT4 if packed else TensorProto.INT8
    attrs: dict = {}
    if transposed:  # MatMul weight [K, N]
        codes, scale = codes.T, scale.T
        attrs["axis"] = 1 if not blocked else 0
        if not blocked:
            scale = scale.reshape(-1)
    else:  # Gemm(transB) [N, K] or Conv [N, C, kh, kw]
        attrs["axis"] = 0 if not blocked else 1
        codes = codes.reshape(shape)
        if not blocked:
            scale = scale.reshape(-1)
    if blocked and int4_as_int8:  # no blocked DQ in the importer: codes * scale, reshaped
        kdim, ndim = codes.shape if transposed else codes.shape[::-1]
        g = kdim // wq.block
        c3 = codes.reshape(g, wq.block, ndim) if transposed else codes.reshape(ndim, g, wq.block)
        s3 = scale.reshape(g, 1, ndim) if transposed else scale.reshape(ndim, g, 1)
        q = b.init(f"{name}.weight_q", np.ascontiguousarray(c3))
        sc = b.init(f"{name}.weight_scale", np.ascontiguousarray(s3))
        shp = b.init(f"{name}.weight_shape", np.array(codes.shape, np.int64))
        b.nodes += [
            helper.make_node("Cast", [q], [f"{name}.weight_f"], to=TensorProto.FLOAT, name=f"{name}.weight_cast"),
            helper.make_node("Mul", [f"{name}.weight_f", sc], [f"{name}.weight_m"], name=f"{name}.weight_mul"),
            helper.make_node("Reshape", [f"{name}.weight_m", shp], [f"{name}.weight_dq"], name=f"{name}.weight_dq"),
        ]
        node.input[1] = f"{name}.weight_dq"
        return
    if blocked:
        attrs["block_size"] = wq.block
    zp = np.zeros(scale.shape, np.int8)
    q = b.init(f"{name}.weight_q", codes, dtype if packed else None)
    s = b.init(f"{name}.weight_scale", scale)
    z = b.init(f"{name}.weight_zp", zp, dtype if packed else None)
    b.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{name}.weight_dq"], name=f"{name}.weight_dq",
                                    **attrs))
    node.input[1] = f"{name}.weight_dq"
    log.debug("layer %s: weight %s -> %s", name, old, node.input[1])


def _act_qdq(b: _Builder, name: str, layer: QuantLayer, node: onnx.NodeProto, step: int | None) -> None:
    src = node.input[0]
    out = f"{name}.input_dq"
    if layer.aq is None:
        if layer.precision.act == "fp16":
            b.nodes.append(helper.make_node("Cast", [src], [f"{name}.input_fp16"], to=TensorProto.FLOAT16,
                                            name=f"{name}.input_cast16"))
            b.nodes.append(helper.make_node("Cast", [f"{name}.input_fp16"], [out], to=TensorProto.FLOAT,
                                            name=f"{name}.input_cast32"))
            node.input[0] = out
        return
    aq = layer.aq
    steps = aq.scale.shape[0]
    pairs = [aq.params_at(i) for i in range(steps)]
    np_t = _ACT_NP[aq.bits]
    if step is not None:
        i = min(step, steps - 1)
        s = b.init(f"{name}.input_scale", np.array(pairs[i][0], np.float32))
        z = b.init(f"{name}.input_zp", np.array(pairs[i][1], np_t))
    else:
        st = b.init(f"{name}.input_scale_table", np.array([p[0] for p in pairs], np.float32))
        zt = b.init(f"{name}.input_zp_table", np.array([p[1] for p in pairs], np_t))
        idx = STEP_INPUT if steps > 1 else b.init(f"{name}.step0", np.array(0, np.int64))
        s, z = f"{name}.input_scale", f"{name}.input_zp"
        b.nodes.append(helper.make_node("Gather", [st, idx], [s], axis=0, name=f"{name}.scale_gather"))
        b.nodes.append(helper.make_node("Gather", [zt, idx], [z], axis=0, name=f"{name}.zp_gather"))
    b.nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [f"{name}.input_q"], name=f"{name}.input_q"))
    b.nodes.append(helper.make_node("DequantizeLinear", [f"{name}.input_q", s, z], [out], name=f"{name}.input_dq"))
    node.input[0] = out


def _toposort(graph: onnx.GraphProto) -> None:
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(not i or i in produced for i in n.input):
                ordered.append(n)
                produced.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise BadModelError(f"QDQ rewrite left a cycle or dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def to_qdq(float_onnx: onnx.ModelProto, qmodel: QuantDenoiser, *, step: int | None = None,
           int4_as_int8: bool = False) -> onnx.ModelProto:
    """The QDQ version of ``float_onnx`` (an export of ``qmodel``'s float model) with its plan applied.

    ``int4_as_int8`` (compatibility form) stores INT4 codes (still in [-8, 7]) in INT8 initializers
    and writes block-wise scales as ``Cast -> Mul -> Reshape``: the same math, for importers
    without packed INT4 or blocked DequantizeLinear (TVM 0.27: "TensorCopyFromBytes: size
    mismatch", "DequantizeLinear blocked quantization is not supported yet").
    """
    model = onnx.ModelProto()
    model.CopyFrom(float_onnx)
    layers = qmodel.layers()
    weights = {n: lay.inner.weight.detach().float().numpy() for n, lay in layers.items()
               if lay.wq is not None or lay.aq is not None or lay.precision.weight == "fp16"
               or lay.precision.act == "fp16"}
    nodes = find_layer_nodes(model, weights)
    b = _Builder(model)
    for name in sorted(nodes):
        node, transposed = nodes[name]
        _weight_qdq(b, name, layers[name], node, transposed, int4_as_int8)
        _act_qdq(b, name, layers[name], node, step)
    g = model.graph
    used = {i for n in list(g.node) + b.nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + b.inits)
    g.node.extend(b.nodes)
    if step is None and qmodel.range_steps > 1:
        g.input.append(helper.make_tensor_value_info(STEP_INPUT, TensorProto.INT64, []))
    del g.value_info[:]
    _toposort(g)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, QDQ_OPSET)
    model.ir_version = max(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def export_qdq(qmodel: QuantDenoiser, path: Path, *, step: int | None = None, float_onnx: Path | None = None,
               int4_as_int8: bool = False) -> Path:
    """Write the QDQ ONNX of ``qmodel`` to ``path`` (atomically); ``float_onnx`` skips the float export."""
    from banana.compiler.zoo import example_inputs, export_onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if float_onnx is None:
        float_onnx = path.with_name(path.stem + ".float.onnx")
        inputs = example_inputs("nano-dit") if _is_nano(qmodel) else _inputs_from_config(qmodel)
        export_onnx(qmodel.model_float(), inputs, float_onnx, opset=QDQ_OPSET)
    proto = to_qdq(onnx.load(str(float_onnx)), qmodel, step=step, int4_as_int8=int4_as_int8)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(path)
    return path


def _is_nano(qmodel: QuantDenoiser) -> bool:
    from banana.compiler.zoo import DIT_CONFIGS

    return getattr(qmodel.model, "config", None) == DIT_CONFIGS["nano"]


def _inputs_from_config(qmodel: QuantDenoiser) -> dict[str, np.ndarray]:
    from banana.compiler.quantize.calibrate import model_shapes

    shape, t, d = model_shapes(qmodel.model)
    rng = np.random.default_rng(0)
    return {"latent": rng.standard_normal(shape, dtype=np.float32), "timestep": np.array([0.5], np.float32),
            "text": rng.standard_normal((1, t, d), dtype=np.float32)}


def ort_denoiser(path: Path, step_of=None):
    """A numpy denoiser over an onnxruntime session (feeds ``step`` from the timestep if the graph has it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def denoise(latent: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        feed = {"latent": latent, "timestep": timestep, "text": text}
        if STEP_INPUT in names:
            feed[STEP_INPUT] = np.array(int(step_of(timestep)), np.int64)
        return sess.run(None, feed)[0]

    return denoise
