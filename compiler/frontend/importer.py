"""ONNX file / torch module -> validated Relax module with weights kept as separate inputs.

Weights stay outside the compiled library (the VM's ``main`` takes the model inputs, then the
weights) so an artifact ships one weights file that apps can swap, e.g. for LoRA-merged peels.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from banana.compiler.errors import BadModelError, UnsupportedOpError
from banana.compiler.frontend.normalize import vectorize_scalar_axes
from banana.compiler.frontend.onnx_loading import check_graph, default_opset, load_onnx
from banana.compiler.frontend.op_support import check_supported
from banana.compiler.frontend.shapes import apply_input_shapes, graph_inputs, resolve_input_shapes

if TYPE_CHECKING:
    import torch
    import tvm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class ImportedModel:
    """Everything later stages need; ``mod`` is Relax with ``main(inputs..., weights...)``."""

    source_path: Path
    sha256: str
    opset: int
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    mod: tvm.IRModule
    weights: list[np.ndarray]
    weight_names: list[str]
    onnx_model: onnx.ModelProto = field(repr=False)

    @property
    def weight_bytes(self) -> int:
        return int(sum(w.nbytes for w in self.weights))


def _elem_dtype(elem_type: int) -> str:
    return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _constants_for_non_float_initializers(model: onnx.ModelProto) -> None:
    """Integer initializers (shapes, axes, indices) become Constant nodes.

    Kept as inputs they would make shapes symbolic in Relax (DESIGN.md field notes); they are
    tiny, so baking them into the library costs nothing.
    """
    graph = model.graph
    keep: list[onnx.TensorProto] = []
    constants: list[onnx.NodeProto] = []
    for init in graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        if np.issubdtype(dtype, np.floating) and len(init.dims) > 0:
            keep.append(init)
        else:
            constants.append(onnx.helper.make_node("Constant", [], [init.name], value=init))
    if not constants:
        return
    moved = {node.output[0] for node in constants}
    remaining_inputs = [value for value in graph.input if value.name not in moved]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.input[:]
    graph.input.extend(remaining_inputs)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + nodes)


def _simplify(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Constant-fold and infer shapes: TorchScript exports carry shape chains TVM cannot build."""
    import onnxscript.optimizer

    try:
        return onnxscript.optimizer.optimize(model, num_iterations=2)
    except Exception as exc:  # the optimizer is best effort; the importer is the judge
        logger.warning("%s: onnxscript optimizer failed (%s); importing unoptimised", source, exc)
        return model


def _type_to_specs(ret_type: object, names: list[str]) -> list[TensorSpec]:
    """TVM 0.27 names Relax struct info "types" (``relax.TensorType``, ``relax.TupleType``)."""
    from tvm import relax

    infos = list(ret_type.fields) if isinstance(ret_type, relax.TupleType) else [ret_type]
    specs = []
    for index, info in enumerate(infos):
        if not isinstance(info, relax.TensorType) or info.shape is None:
            raise BadModelError(f"output {index} has no static tensor shape after import")
        shape = tuple(int(d) for d in info.shape.values)
        name = names[index] if index < len(names) else f"output{index}"
        specs.append(TensorSpec(name, shape, str(info.dtype)))
    return specs


def import_onnx(path: Path | str, shape_overrides: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    """Load, validate (all unsupported nodes at once), fix shapes and convert to Relax."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    path = Path(path)
    source = str(path)
    model, digest = load_onnx(path)
    # Standard ONNX Attention (opset 23+, misread by TVM 0.27) and onnxruntime's GroupQueryAttention
    # become the decomposed form that the fuse stage turns into banana's kernel; what cannot be
    # rewritten stays and is reported by the op check below.
    from banana.compiler.passes.onnx_attention import decompose_attention_ops

    model, _ = decompose_attention_ops(model)
    check_supported(model, source)
    check_graph(path)
    shapes = resolve_input_shapes(model, shape_overrides or {}, source)
    apply_input_shapes(model, shapes)
    input_specs = [
        TensorSpec(v.name, shapes[v.name], _elem_dtype(v.type.tensor_type.elem_type))
        for v in graph_inputs(model)
    ]
    prepared = _simplify(model, source)
    vectorize_scalar_axes(prepared)
    _constants_for_non_float_initializers(prepared)
    try:
        mod = from_onnx(
            prepared,
            shape_dict={spec.name: list(spec.shape) for spec in input_specs},
            dtype_dict={spec.name: spec.dtype for spec in input_specs},
            keep_params_in_input=True,
        )
    except (NotImplementedError, KeyError, AttributeError) as exc:
        raise UnsupportedOpError(f"{source}: TVM's ONNX importer failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BadModelError(f"{source}: TVM's ONNX importer failed: {message}") from None
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    weights = [p.numpy() for p in params.get("main", [])]
    weight_vars = list(main.params)[len(input_specs) :]
    if len(weight_vars) != len(weights):
        raise BadModelError(f"{source}: importer produced {len(weight_vars)} weight inputs, {len(weights)} values")
    outputs = _type_to_specs(main.ret_ty, [o.name for o in prepared.graph.output])
    producer = f"{model.producer_name} {model.producer_version}".strip()
    logger.info(
        "imported %s: %d inputs, %d outputs, %d weights (%.1f MB)",
        source, len(input_specs), len(outputs), len(weights), sum(w.nbytes for w in weights) / 1e6,
    )
    return ImportedModel(
        source_path=path.resolve(),
        sha256=digest,
        opset=default_opset(model),
        producer=producer or "unknown",
        inputs=input_specs,
        outputs=outputs,
        mod=mod,
        weights=weights,
        weight_names=[v.name for v in weight_vars],
        onnx_model=model,
    )


def import_torch(
    module: torch.nn.Module,
    example_inputs: dict[str, np.ndarray],
    workdir: Path | None = None,
    *,
    dynamo: bool = True,
    opset: int = 18,
) -> ImportedModel:
    """torch module -> ONNX with banana's exporter settings -> :func:`import_onnx`.

    Going through ONNX keeps one import path (and onnxruntime as the independent reference).
    """
    from banana.compiler.zoo.export import export_onnx

    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="banana-torch-"))
    path = export_onnx(
        module, example_inputs, directory / "model.onnx", opset=opset, dynamo=dynamo, input_names=tuple(example_inputs)
    )
    return import_onnx(path)


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
