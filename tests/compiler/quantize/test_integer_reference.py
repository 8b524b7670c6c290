"""banana's integer reference against independent ones: onnxruntime's QDQ semantics and numpy float64."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.quantize import integer_reference as ref


def _ort(nodes, inputs, outputs, inits, feed):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("dtype,tp,zp", [("uint8", TensorProto.UINT8, 131), ("int8", TensorProto.INT8, -3),
                                         ("uint16", TensorProto.UINT16, 30000)])
def test_quantize_matches_onnx_quantizelinear_including_ties_and_saturation(dtype, tp, zp) -> None:
    scale = np.float32(0.05)
    ties = (np.arange(-6, 7, dtype=np.float32) + np.float32(0.5)) * scale  # exact .5 multiples: half-to-even
    rng = np.random.default_rng(1)
    x = np.concatenate([ties, rng.standard_normal(2000).astype(np.float32) * 8, [1e6, -1e6]]).astype(np.float32)
    x = x.reshape(1, -1)
    got = ref.quantize(x, float(scale), zp, dtype)
    want = _ort([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                [helper.make_tensor_value_info("y", tp, list(x.shape))],
                [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(zp, dtype), "z")],
                {"x": x})
    np.testing.assert_array_equal(got, want)


def test_accumulate_is_the_exact_integer_product_and_group_sums() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (5, 96)).astype(np.uint8)
    w = rng.integers(-128, 128, (7, 96)).astype(np.int8)
    exact = a.astype(np.float64) @ w.astype(np.float64).T  # < 2**53: exact in float64
    np.testing.assert_array_equal(ref.accumulate(a, w), exact.astype(np.int32))
    groups = ref.accumulate(a, w, k_group=32)
    assert groups.shape == (5, 7, 3)
    np.testing.assert_array_equal(groups.sum(axis=2), exact.astype(np.int32))
    np.testing.assert_array_equal(groups[:, :, 1], (a[:, 32:64].astype(np.float64) @ w[:, 32:64].T.astype(np.float64)))


def test_requant_epilogue_within_one_step_of_onnxruntime_dq_matmul_q() -> None:
    """The documented epilogue vs onnxruntime's float DQ -> MatMul -> Add -> Q path on the same integers."""
    rng = np.random.default_rng(3)
    m, k, n = 64, 128, 48
    sa, za, so, zo = np.float32(0.021), 117, np.float32(0.35), 121
    xq = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    sw = (rng.random(n).astype(np.float32) * 0.01 + 0.001).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wf"], axis=1),
             helper.make_node("MatMul", ["x", "wf"], ["h"]), helper.make_node("Add", ["h", "b"], ["h2"]),
             helper.make_node("QuantizeLinear", ["h2", "so", "zo"], ["y"])]
    inits = [numpy_helper.from_array(np.array(sa), "sa"), numpy_helper.from_array(np.array(za, np.uint8), "za"),
             numpy_helper.from_array(np.ascontiguousarray(w.T), "wq"), numpy_helper.from_array(sw, "sw"),
             numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.array(so), "so"),
             numpy_helper.from_array(np.array(zo, np.uint8), "zo")]
    want = _ort(nodes, [helper.make_tensor_value_info("xq", TensorProto.UINT8, [m, k])],
                [helper.make_tensor_value_info("y", TensorProto.UINT8, [m, n])], inits, {"xq": xq})
    scale = ref.combined_scale(sa, sw)
    cb = ref.zero_point_correction(w, za) + ref.bias_to_int32(bias, scale)
    got = ref.requant(ref.accumulate(xq, w), cb, ref.requant_multiplier(sa, sw, so), zo, "uint8")
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.99  # a flip needs the exact value next to a .5 boundary


def test_dequant_epilogue_and_im2col_match_onnxruntime_qdq_conv() -> None:
    rng = np.random.default_rng(4)
    sa, za = np.float32(0.03), 100
    xq = rng.integers(0, 256, (2, 3, 9, 7)).astype(np.uint8)
    w = rng.integers(-8, 8, (5, 3, 3, 2)).astype(np.int8)
    sw = (rng.random(5).astype(np.float32) * 0.1 + 0.01).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    strides, pads = (2, 1), (1, 0, 1, 1)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wf"], axis=0),
             helper.make_node("Conv", ["x", "wf", "b"], ["y"], strides=list(strides), pads=list(pads))]
    inits = [numpy_helper.from_array(np.array(sa), "sa"), numpy_helper.from_array(np.array(za, np.uint8), "za"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(sw, "sw"), numpy_helper.from_array(bias, "b")]
    want = _ort(nodes, [helper.make_tensor_value_info("xq", TensorProto.UINT8, list(xq.shape))],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, {"xq": xq})
    cols = ref.im2col(xq, (3, 2), strides, pads, za)
    w2 = w.reshape(5, -1)
    y = ref.dequant(ref.accumulate(cols, w2), ref.zero_point_correction(w2, za), ref.combined_scale(sa, sw), bias)
    b, _, oh, ow = want.shape
    got = y.reshape(b, oh, ow, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
