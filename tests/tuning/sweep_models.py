"""A tiny denoiser as ONNX (inputs latent/timestep/text, output x0), built with onnx.helper.

Small enough that a real sweep trial -- compile, report, onnxruntime sampling for fidelity --
takes seconds, so multi-worker sweeps fit in the default test run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_tiny_denoiser(path: Path, seed: int = 0) -> Path:
    """x0 = tanh((latent @ W) * (1 - t) + mean_tokens(text) + latent * t)  on latent [1,1,8,8], text [1,4,8]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "t_shape"),
             numpy_helper.from_array(np.array([1, 1, 1, 8], np.int64), "c_shape"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [
        helper.make_node("MatMul", ["latent", "w"], ["h"]),
        helper.make_node("Reshape", ["timestep", "t_shape"], ["t"]),
        helper.make_node("Sub", ["one", "t"], ["keep"]),
        helper.make_node("Mul", ["h", "keep"], ["hk"]),
        helper.make_node("Mul", ["latent", "t"], ["lt"]),
        helper.make_node("ReduceMean", ["text", "axes"], ["c"], keepdims=1),
        helper.make_node("Reshape", ["c", "c_shape"], ["c4"]),
        helper.make_node("Add", ["hk", "c4"], ["s1"]),
        helper.make_node("Add", ["s1", "lt"], ["s2"]),
        helper.make_node("Tanh", ["s2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_denoiser",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 1, 8, 8]),
         helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("text", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="banana-tests")
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
