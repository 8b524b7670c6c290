"""onnxruntime_divergence: where a compiled model's quantized activations first part from onnxruntime's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.passes.integer_verify import onnxruntime_divergence


def _qdq_matmul(path: Path) -> Path:
    """x -> Q -> DQ -> MatMul(DQ(int8 w)) -> y: one quantized layer, activation scale 0.1, zero point 3."""
    w = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.uint8), "z"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.array(0.05, np.float32), "ws")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="layer")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_divergence_names_first_differing_code_and_both_values(tmp_path: Path) -> None:
    model = _qdq_matmul(tmp_path / "m.onnx")
    x = np.array([[0.0, 0.26, -0.1, 0.7], [1.0, 0.31, -0.3, 0.04]], np.float32)
    q = np.clip(np.rint(x / np.float32(0.1)) + 3, 0, 255).astype(np.uint8)  # ONNX QuantizeLinear, by hand
    specs = [{"layer": 0, "kind": "x"}, {"layer": 0, "kind": "q"}]

    same = onnxruntime_divergence(model, {"x": x}, [x, q], specs)
    assert [(d.layer, d.elements, d.mismatches) for d in same] == [("layer", 8, 0)]

    ours_x = x.copy()
    ours_x[0, 1] = 0.24  # as if our float op had computed 2.4 steps where onnxruntime has 2.6
    ours_q = q.copy()
    ours_q[0, 1] -= 1
    ours_q[1, 2] += 1
    (d,) = onnxruntime_divergence(model, {"x": x}, [ours_x, ours_q], specs)
    assert d.mismatches == 2 and d.first == (0, 1)  # the first in row-major order
    assert d.ours == float(np.float32(0.24) / np.float32(0.1))
    assert d.theirs == float(np.float32(0.26) / np.float32(0.1))
