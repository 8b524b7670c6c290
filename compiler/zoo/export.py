"""The project's own torch -> ONNX export settings for reference denoisers.

Both exporters end in the same normal form, which is what banana's frontend and TVM's Relax ONNX
importer are tested against: static shapes, inputs ``latent``/``timestep``/``text``, a single
output named :data:`OUTPUT_NAME` (``"output"``: the trained nano DiT predicts x0, not noise), no
unknown-shape chains (TorchScript exports go through ``onnxscript.optimizer.optimize``, which
folds the Shape/Gather/Concat chains TVM's VM codegen cannot handle), no ``Attention`` op (opset
23's is mis-read by TVM 0.27), no 0-d ``axes`` tensors (TVM's Unsqueeze rejects them). Node
stack-trace/namespace metadata the dynamo exporter attaches is dropped so the bytes depend only
on the model and settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
import torch

from banana.compiler.errors import ArtifactError, BadConfigError, BadModelError
from banana.compiler.frontend.normalize import vectorize_scalar_axes

log = logging.getLogger(__name__)

INPUT_NAMES = ("latent", "timestep", "text")
OUTPUT_NAME = "output"
METADATA_KEY = "banana.zoo.key"
# Bump when the export normal form changes, so reference_onnx() does not reuse stale files.
EXPORT_FORMAT_VERSION = "1"


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node debug metadata (source stack traces, module paths): not semantics."""

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.g is not None and attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            del vi.metadata_props[:]
            vi.doc_string = ""
        for init in graph.initializer:
            del init.metadata_props[:]
        del graph.metadata_props[:]
        graph.doc_string = ""

    visit(model.graph)
    model.doc_string = ""
    del model.metadata_props[:]


def _rename_output(model: onnx.ModelProto, name: str) -> None:
    """Rename the single graph output (and every use of it) to ``name``."""
    if len(model.graph.output) != 1:
        raise BadModelError(f"exported graph has {len(model.graph.output)} outputs; expected 1")
    old = model.graph.output[0].name
    if old == name:
        return
    for node in model.graph.node:
        for i, o in enumerate(node.output):
            if o == old:
                node.output[i] = name
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = name
    model.graph.output[0].name = name


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE}


_EXTERNAL_MIN_ELEMENTS = 64


def _externalize_float_tensors(model: onnx.ModelProto, location: str) -> None:
    """Mark floating-point initializers of >= 64 elements for ``location``; the rest stay inline.

    onnxruntime's shape inference (and TVM's importer) must read shape-like constants at load
    time -- a ReduceMean's int64 axes, a Resize's 4 float scales -- and fail on external ones, so
    "all tensors" means all weights; tiny float vectors stay inline with the int64 constants.
    """
    for t in model.graph.initializer:
        if t.data_type not in _FLOAT_TYPES or int(np.prod(t.dims)) < _EXTERNAL_MIN_ELEMENTS:
            continue
        if not t.HasField("raw_data"):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
        onnx.external_data_helper.set_external_data(t, location)


def _check_static(model: onnx.ModelProto, path: Path, input_names: tuple[str, ...]) -> None:
    names = [i.name for i in model.graph.input]
    if tuple(names) != input_names:
        raise BadModelError(f"{path}: exported inputs {names}; expected {list(input_names)}")
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") for d in dims):
            raise BadModelError(f"{path}: graph value {vi.name!r} does not have a static shape")


def _export_dynamo(
    model: torch.nn.Module, args: tuple[torch.Tensor, ...], opset: int, names: tuple[str, ...]
) -> onnx.ModelProto:
    prog = torch.onnx.export(
        model, args, dynamo=True, input_names=list(names), output_names=[OUTPUT_NAME],
        opset_version=opset, optimize=True, external_data=False, verify=False, report=False,
    )
    return prog.model_proto


def _export_torchscript(
    model: torch.nn.Module, args: tuple[torch.Tensor, ...], opset: int, names: tuple[str, ...]
) -> onnx.ModelProto:
    import onnxscript.optimizer

    buf = io.BytesIO()
    torch.onnx.export(
        model, args, buf, dynamo=False, input_names=list(names), output_names=[OUTPUT_NAME],
        opset_version=opset, do_constant_folding=True,
    )
    proto = onnx.load_from_string(buf.getvalue())
    # TorchScript leaves Shape->Gather->Concat->Reshape chains with unknown shapes: fold them.
    return onnxscript.optimizer.optimize(proto)


def _as_input_array(value: np.ndarray) -> np.ndarray:
    """Floats are exported as float32 (the denoisers' contract); integer inputs keep their type."""
    array = np.asarray(value)
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype
    return np.ascontiguousarray(array, dtype=dtype)


def export_onnx(
    model: torch.nn.Module,
    inputs: dict[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamo: bool = True,
    external_data: bool = False,
    metadata: dict[str, str] | None = None,
    input_names: tuple[str, ...] = INPUT_NAMES,
) -> Path:
    """Export ``model(latent, timestep, text)`` at the static shapes of ``inputs``; returns ``path``.

    ``external_data=True`` puts every tensor into ``<name>.onnx.data`` beside the model (one file,
    relative location). Both files are written to a temp dir beside ``path`` and renamed into
    place (data first), so a reader never sees a half-written model. ``metadata`` lands in the
    model's ``metadata_props``. ``input_names``: the module's positional inputs, in order (the
    denoiser convention by default; the pipeline passes a general module's own names).
    """
    path = Path(path)
    input_names = tuple(input_names)
    missing = [k for k in input_names if k not in inputs]
    if missing:
        raise BadConfigError(f"export_onnx inputs lack {missing}; expected keys {list(input_names)}")
    if opset >= 23:
        raise BadConfigError(f"export_onnx opset={opset}: opset >= 23 emits Attention, which TVM 0.27 misreads")
    args = tuple(torch.from_numpy(_as_input_array(inputs[k])) for k in input_names)
    model = model.eval()
    exporter = "dynamo" if dynamo else "torchscript"
    try:
        with torch.no_grad():
            export = _export_dynamo if dynamo else _export_torchscript
            proto = export(model, args, opset, input_names)
    except Exception as e:  # exporter internals: report one line naming the file and exporter
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise BadModelError(f"{path}: torch {exporter} ONNX export failed: {msg}") from e
    _strip_metadata(proto)
    _rename_output(proto, OUTPUT_NAME)
    vectorize_scalar_axes(proto)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    _check_static(proto, path, input_names)
    for k, v in sorted((metadata or {}).items()):
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)

    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            _externalize_float_tensors(proto, data_name)
            onnx.save_model(proto, tmp_model)  # writes tmpdir/<data_name> too
            os.replace(tmpdir / data_name, path.parent / data_name)
        else:
            onnx.save_model(proto, tmp_model)
        os.replace(tmp_model, path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot write ONNX model ({e})") from e
    finally:
        for f in tmpdir.iterdir():
            f.unlink()
        tmpdir.rmdir()
    log.info("exported %s (%s, opset %d%s)", path, exporter, opset,
             ", external data" if external_data else "")
    return path


def settings_key(**settings: object) -> str:
    """Stable hash of export settings (what :func:`reference_onnx` compares before reusing)."""
    blob = json.dumps({"format": EXPORT_FORMAT_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata_props`` of an ONNX file without loading its external data."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
