"""Shared fixtures for the OpenCL backend tests: PoCL cache isolation and small ONNX models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node: non-float data (shapes, axes) must not become Relax params."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_value"))


def _model(nodes, inputs, outputs, inits, opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def matmul_add_model(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {"W": rng.standard_normal((64, 96)).astype(np.float32), "B": rng.standard_normal(96).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "B"], ["out"])]
    return _model(nodes, [("x", [1, 48, 64])], [("out", [1, 48, 96])], inits)


def layernorm_gelu_model(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {
        "gamma": (1 + 0.1 * rng.standard_normal(80)).astype(np.float32),
        "beta": (0.1 * rng.standard_normal(80)).astype(np.float32),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        _const("sqrt2", np.array(np.sqrt(2.0), np.float32)),
        _const("one", np.array(1.0, np.float32)),
        _const("half", np.array(0.5, np.float32)),
        helper.make_node("Div", ["ln", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["ln", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["out"]),
    ]
    return _model(nodes, [("x", [2, 24, 80])], [("out", [2, 24, 80])], inits)


def softmax_model(rng: np.random.Generator) -> onnx.ModelProto:
    del rng
    shape = [2, 4, 32, 50]
    return _model([helper.make_node("Softmax", ["x"], ["out"], axis=-1)], [("x", shape)], [("out", shape)], {})


def conv_groupnorm_silu_model(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {
        "w": (0.2 * rng.standard_normal((16, 8, 3, 3))).astype(np.float32),
        "b": (0.1 * rng.standard_normal(16)).astype(np.float32),
        "scale": (1 + 0.1 * rng.standard_normal(16)).astype(np.float32),
        "bias": (0.1 * rng.standard_normal(16)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("GroupNormalization", ["c", "scale", "bias"], ["g"], num_groups=4, epsilon=1e-5),
        helper.make_node("Sigmoid", ["g"], ["s"]),
        helper.make_node("Mul", ["g", "s"], ["out"]),
    ]
    return _model(nodes, [("x", [1, 8, 16, 16])], [("out", [1, 16, 16, 16])], inits, opset=21)


def gqa_attention_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> q (4 heads), k/v (2 heads) repeated to 4 heads -> softmax(q k^T / sqrt(d)) v -> out proj."""
    seq, dim, heads, kv_heads, hd = 16, 64, 4, 2, 16
    inits = {
        "wq": (rng.standard_normal((dim, heads * hd)) / 8).astype(np.float32),
        "wk": (rng.standard_normal((dim, kv_heads * hd)) / 8).astype(np.float32),
        "wv": (rng.standard_normal((dim, kv_heads * hd)) / 8).astype(np.float32),
        "wo": (rng.standard_normal((heads * hd, dim)) / 8).astype(np.float32),
    }
    i64 = np.int64
    nodes = [
        _const("q_shape", np.array([1, seq, heads, hd], i64)),
        _const("kv_shape", np.array([1, seq, kv_heads, hd], i64)),
        _const("rep_shape", np.array([1, kv_heads, heads // kv_heads, seq, hd], i64)),
        _const("merged_shape", np.array([1, heads, seq, hd], i64)),
        _const("out_shape", np.array([1, seq, heads * hd], i64)),
        _const("unsq_axes", np.array([2], i64)),
        _const("scale", np.array(1.0 / np.sqrt(hd), np.float32)),
        helper.make_node("MatMul", ["x", "wq"], ["q0"]),
        helper.make_node("Reshape", ["q0", "q_shape"], ["q1"]),
        helper.make_node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
    ]
    for name in ("k", "v"):
        nodes += [
            helper.make_node("MatMul", ["x", "w" + name], [name + "0"]),
            helper.make_node("Reshape", [name + "0", "kv_shape"], [name + "1"]),
            helper.make_node("Transpose", [name + "1"], [name + "2"], perm=[0, 2, 1, 3]),
            helper.make_node("Unsqueeze", [name + "2", "unsq_axes"], [name + "3"]),
            helper.make_node("Expand", [name + "3", "rep_shape"], [name + "4"]),
            helper.make_node("Reshape", [name + "4", "merged_shape"], [name]),
        ]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o0"]),
        helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o1", "out_shape"], ["o2"]),
        helper.make_node("MatMul", ["o2", "wo"], ["out"]),
    ]
    return _model(nodes, [("x", [1, seq, dim])], [("out", [1, seq, dim])], inits)


MODELS = {
    "matmul_add": matmul_add_model,
    "layernorm_gelu": layernorm_gelu_model,
    "softmax": softmax_model,
    "conv_groupnorm_silu": conv_groupnorm_silu_model,
    "gqa_attention": gqa_attention_model,
}


@pytest.fixture(scope="session")
def onnx_models():
    """name -> builder(rng) of the small static-shape test models."""
    return MODELS
