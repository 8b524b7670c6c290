"""Rewrite the standard ONNX ``Attention`` op (opset 23/24) and onnxruntime's
``com.microsoft.GroupQueryAttention`` into the decomposed form the Relax attention pass fuses.

Why: TVM 0.27's importer misreads the standard op as Microsoft's (``KeyError: 'num_heads'``), and
torch >= 2.9 exports ``scaled_dot_product_attention`` (incl. ``enable_gqa=True``) as this op at
opset >= 23. Decomposing before import (MatMul -> Mul -> [Add mask] -> Softmax -> MatMul, with
transformers' Unsqueeze/Expand/Reshape repeat for ``kv_num_heads < q_num_heads``) lets the fusion
pass turn it back into one fused kernel call. ``is_causal`` becomes a constant 0/-inf mask that the
matcher recognises as causal (so the kernel skips masked tiles and no mask buffer is kept).

Supported: 3D ``[B, L, H*D]`` (with ``q_num_heads``/``kv_num_heads``) and 4D ``[B, H, L, D]``
inputs, ``scale``, ``is_causal``, additive float and boolean ``attn_mask``. Nodes using the KV cache
inputs/outputs, ``softcap`` or the ``qk_matmul_output`` output are left as they are (and are then
reported by the frontend's op check). GroupQueryAttention: the prompt form (no past KV, no
rotary, no local window/softcap), packed or separate Q/K/V; it is causal with key padding from
``seqlens_k``, and its present_key/present_value outputs are the BNSH K/V.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger(__name__)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in inferred.graph.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({init.name: init.data_type for init in inferred.graph.initializer})
    return types


def _unsupported_reason(node: onnx.NodeProto, attrs: dict[str, object]) -> str | None:
    inputs = list(node.input) + [""] * 6
    outputs = list(node.output) + [""] * 4
    if inputs[4] or inputs[5] or any(outputs[1:4]):
        return "KV-cache inputs/outputs or qk_matmul_output are used"
    if float(attrs.get("softcap", 0.0) or 0.0) != 0.0:
        return "softcap"
    if len(inputs) > 6 and any(inputs[6:]):
        return "nonpad_kv_seqlen input"
    return None


def _is_standard_attention(node: onnx.NodeProto) -> bool:
    return node.op_type == "Attention" and node.domain in ("", "ai.onnx")


def _is_ms_gqa(node: onnx.NodeProto) -> bool:
    return node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft"


def _gqa_unsupported_reason(node: onnx.NodeProto, attrs: dict[str, object]) -> str | None:
    inputs = list(node.input) + [""] * 12
    if inputs[3] or inputs[4]:
        return "past_key/past_value (KV cache) inputs are used"
    if any(inputs[7:]):
        return "rotary caches, position_ids, attention_bias or head_sink inputs are used"
    if int(attrs.get("do_rotary", 0) or 0) or int(attrs.get("local_window_size", -1)) != -1:
        return "do_rotary or local_window_size"
    if float(attrs.get("softcap", 0.0) or 0.0) != 0.0 or int(attrs.get("smooth_softmax", 0) or 0):
        return "softcap or smooth_softmax"
    if not inputs[5]:
        return "seqlens_k input missing"
    return None


def decompose_attention_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every supported standard ``Attention`` and ``com.microsoft.
    GroupQueryAttention`` node decomposed; returns (model, number of nodes decomposed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    targets = [n for n in model.graph.node if _is_standard_attention(n) or _is_ms_gqa(n)]
    if not targets:
        return model, 0
    shapes = _shapes(model)
    types = _elem_types(model)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for index, node in enumerate(model.graph.node):
        if node not in targets:
            new_nodes.append(node)
            continue
        attrs = _attrs(node)
        gqa = _is_ms_gqa(node)
        reason = _gqa_unsupported_reason(node, attrs) if gqa else _unsupported_reason(node, attrs)
        q_shape = shapes.get(node.input[0])
        k_shape = shapes.get(node.input[1]) if node.input[1] else q_shape
        if reason is None and (q_shape is None or k_shape is None):
            reason = "Q/K shapes are not static"
        if reason is not None:
            logger.warning("ONNX %s '%s' not decomposed: %s", node.op_type, node.name or index, reason)
            new_nodes.append(node)
            continue
        prefix = f"{node.name or 'attn'}_{index}"
        if gqa:
            new_nodes.extend(_decompose_gqa(node, attrs, q_shape, k_shape, types, model, prefix))
        else:
            new_nodes.extend(_decompose(node, attrs, q_shape, k_shape, types, model, prefix))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return model, count


def _decompose_gqa(node: onnx.NodeProto, attrs: dict[str, object], q_shape: tuple[int, ...],
                   k_shape: tuple[int, ...], types: dict[str, int], model: onnx.ModelProto,
                   p: str) -> list[onnx.NodeProto]:
    """GroupQueryAttention (prompt form, no KV cache) = causal 3D Attention + key padding from
    ``seqlens_k`` (keys j <= seqlens_k[b] are valid); present_key/value are the BNSH K/V."""
    hq, hkv = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    b, lq, _ = q_shape
    d = q_shape[2] // (hq + 2 * hkv) if not node.input[1] else q_shape[2] // hq
    lkv = lq if not node.input[1] else k_shape[1]
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        full = f"{p}_{name}"
        nodes.append(helper.make_node("Constant", [], [full], value=numpy_helper.from_array(value, full)))
        return full

    q, k, v = node.input[0], node.input[1], node.input[2]
    if not k:  # packed QKV [B, S, (Hq + 2 Hkv) * D]
        sizes = const("split", np.array([hq * d, hkv * d, hkv * d], np.int64))
        q, k, v = f"{p}_q", f"{p}_k", f"{p}_v"
        nodes.append(helper.make_node("Split", [node.input[0], sizes], [q, k, v], axis=2))
    elem = types.get(node.input[0], onnx.TensorProto.FLOAT)
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    keys = const("key_pos", np.arange(lkv, dtype=np.int64).reshape(1, lkv))
    one = const("one", np.array(1, np.int64))
    axes = const("len_axes", np.array([1], np.int64))
    mask_shape = const("mask_shape", np.array([b, 1, 1, lkv], np.int64))
    nodes += [
        helper.make_node("Cast", [node.input[5]], [f"{p}_lens64"], to=onnx.TensorProto.INT64),
        helper.make_node("Add", [f"{p}_lens64", one], [f"{p}_lens"]),
        helper.make_node("Unsqueeze", [f"{p}_lens", axes], [f"{p}_lens2"]),
        helper.make_node("Less", [keys, f"{p}_lens2"], [f"{p}_valid"]),
        helper.make_node("Reshape", [f"{p}_valid", mask_shape], [f"{p}_valid4"]),
        helper.make_node("Where", [f"{p}_valid4", const("zero", np.array(0, np_dtype)),
                                   const("neg", np.array(-np.inf, np_dtype))], [f"{p}_mask"]),
    ]
    std_attrs: dict[str, object] = {"q_num_heads": hq, "kv_num_heads": hkv, "is_causal": 1}
    if attrs.get("scale") not in (None, 0.0):
        std_attrs["scale"] = float(attrs["scale"])
    std = helper.make_node("Attention", [q, k, v, f"{p}_mask"], [node.output[0]])
    present = tuple(node.output[1:3]) if len(node.output) >= 3 else ()
    nodes += _decompose(std, std_attrs, (b, lq, hq * d), (b, lkv, hkv * d), types, model, p + "_a",
                        present=present)
    return nodes


def _decompose(node: onnx.NodeProto, attrs: dict[str, object], q_shape: tuple[int, ...], k_shape: tuple[int, ...],
               types: dict[str, int], model: onnx.ModelProto, p: str,
               present: tuple[str, ...] = ()) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    elem = types.get(node.input[0], onnx.TensorProto.FLOAT)
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)

    def const(name: str, value: np.ndarray) -> str:
        full = f"{p}_{name}"
        nodes.append(helper.make_node("Constant", [], [full], value=numpy_helper.from_array(value, full)))
        return full

    q, k, v = node.input[0], node.input[1], node.input[2]
    if len(q_shape) == 3:
        hq, hkv = int(attrs["q_num_heads"]), int(attrs["kv_num_heads"])
        b, lq, hidden = q_shape
        d = hidden // hq
        lkv = k_shape[1]
        for name, heads, length in ((q, hq, lq), (k, hkv, lkv), (v, hkv, lkv)):
            shape = const(f"{name}_shape4", np.array([b, length, heads, -1], np.int64))
            nodes.append(helper.make_node("Reshape", [name, shape], [f"{p}_{name}_r"]))
            nodes.append(helper.make_node("Transpose", [f"{p}_{name}_r"], [f"{p}_{name}_4d"], perm=[0, 2, 1, 3]))
        q, k, v = f"{p}_{q}_4d", f"{p}_{k}_4d", f"{p}_{v}_4d"
        for out_name, src in zip(present, (k, v), strict=False):
            if out_name:  # KV-cache outputs (BNSH) of GroupQueryAttention
                nodes.append(helper.make_node("Identity", [src], [out_name]))
    else:
        b, hq, lq, d = q_shape
        hkv, lkv = k_shape[1], k_shape[2]
    if hq != hkv:
        n = hq // hkv
        axes = const("rep_axes", np.array([2], np.int64))
        expand = const("rep_shape", np.array([1, 1, n, 1, 1], np.int64))
        for name in ("k", "v"):
            src = k if name == "k" else v
            merged = const(f"{name}_merged", np.array([b, hq, lkv, -1], np.int64))
            nodes += [helper.make_node("Unsqueeze", [src, axes], [f"{p}_{name}_u"]),
                      helper.make_node("Expand", [f"{p}_{name}_u", expand], [f"{p}_{name}_e"]),
                      helper.make_node("Reshape", [f"{p}_{name}_e", merged], [f"{p}_{name}_rep"])]
        k, v = f"{p}_k_rep", f"{p}_v_rep"
    scale = attrs.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    nodes += [helper.make_node("Transpose", [k], [f"{p}_kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", [q, f"{p}_kt"], [f"{p}_qk"]),
              helper.make_node("Mul", [f"{p}_qk", const("scale", np.array(scale, np_dtype))], [f"{p}_s"])]
    scores = f"{p}_s"
    mask = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    if mask:
        if types.get(mask) == onnx.TensorProto.BOOL:
            zero, neg = const("mask_zero", np.array(0, np_dtype)), const("mask_neg", np.array(-np.inf, np_dtype))
            nodes.append(helper.make_node("Where", [mask, zero, neg], [f"{p}_mask_add"]))
            mask = f"{p}_mask_add"
        nodes.append(helper.make_node("Add", [scores, mask], [f"{p}_sm"]))
        scores = f"{p}_sm"
    if int(attrs.get("is_causal", 0) or 0):
        causal = np.triu(np.full((lq, lkv), -np.inf, np_dtype), 1).astype(np_dtype)
        nodes.append(helper.make_node("Add", [scores, const("causal", causal)], [f"{p}_sc"]))
        scores = f"{p}_sc"
    nodes.append(helper.make_node("Softmax", [scores], [f"{p}_p"], axis=-1))
    out = node.output[0]
    if len(q_shape) == 3:
        nodes.append(helper.make_node("MatMul", [f"{p}_p", v], [f"{p}_o4"]))
        nodes.append(helper.make_node("Transpose", [f"{p}_o4"], [f"{p}_o_t"], perm=[0, 2, 1, 3]))
        shape = const("out_shape", np.array([b, lq, -1], np.int64))
        nodes.append(helper.make_node("Reshape", [f"{p}_o_t", shape], [out]))
    else:
        nodes.append(helper.make_node("MatMul", [f"{p}_p", v], [out]))
    return nodes
