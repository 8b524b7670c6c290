"""ONNX rewrites that keep a graph's meaning but sidestep TVM 0.27 importer limitations."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

AXES_INPUT_OPS = frozenset({"Unsqueeze", "Squeeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"})


def vectorize_scalar_axes(model: onnx.ModelProto) -> int:
    """Give 0-d ``axes`` tensors shape ``[1]`` (the same meaning in ONNX); returns how many changed.

    The dynamo exporter emits a scalar axes tensor for SDPA's GQA Unsqueeze (``enable_gqa=True`` at
    opsets 17/18); TVM 0.27's Unsqueeze converter iterates over it and fails ("'int' object is not
    iterable"). The axes may be an initializer or a ``Constant`` node, depending on the optimizer.
    """
    graph = model.graph
    axes_names = {n.input[1] for n in graph.node if n.op_type in AXES_INPUT_OPS and len(n.input) > 1 and n.input[1]}
    changed: set[str] = set()
    for init in graph.initializer:
        if init.name in axes_names and len(init.dims) == 0:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).reshape(1), init.name))
            changed.add(init.name)
    for node in graph.node:
        if node.op_type != "Constant" or node.output[0] not in axes_names:
            continue
        for attr in node.attribute:
            if attr.name == "value" and len(attr.t.dims) == 0:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).reshape(1), attr.t.name))
                changed.add(node.output[0])
    stale = [vi for vi in graph.value_info if vi.name in changed]
    for vi in stale:  # shape inference re-derives them; a rank-0 record would now contradict
        graph.value_info.remove(vi)
    return len(changed)
