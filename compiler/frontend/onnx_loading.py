"""Reading an ONNX file safely: it is untrusted input.

External-data references are checked before any byte is read (paths must stay inside the
model's folder, files must exist and be large enough), so a crafted model can neither read
arbitrary files nor make us allocate more than its data files hold.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from banana.compiler.errors import BadModelError

logger = logging.getLogger(__name__)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, including those of subgraphs (If/Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_tensors(sub)


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def check_external_data(model: onnx.ModelProto, model_path: Path) -> None:
    """Refuse external-data references that escape the model folder, are missing or are short."""
    base = model_path.parent.resolve()
    for tensor in _all_tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        where = f"{model_path}: initializer '{tensor.name}'"
        location = Path(info.location)
        if location.is_absolute():
            raise BadModelError(f"{where}: external-data path '{info.location}' is absolute")
        data_path = (base / location).resolve()
        if not data_path.is_relative_to(base):
            raise BadModelError(
                f"{where}: external-data path '{info.location}' escapes the model folder {base}"
            )
        if not data_path.is_file():
            raise BadModelError(f"{where}: external-data file '{info.location}' not found")
        size = data_path.stat().st_size
        offset = int(info.offset or 0)
        length = int(info.length) if info.length else None
        expected = _expected_bytes(tensor)
        if length is None:
            length = expected if expected is not None else size - offset
        if expected is not None and length != expected:
            raise BadModelError(
                f"{where}: external-data length {length} B does not match its shape ({expected} B)"
            )
        if offset < 0 or offset + length > size:
            raise BadModelError(
                f"{where}: external data [{offset}, {offset + length}) lies beyond the end of "
                f"'{info.location}' ({size} B)"
            )


def load_onnx(path: Path) -> tuple[onnx.ModelProto, str]:
    """Load a model with its external data; returns the model and the sha256 of the .onnx file."""
    if not path.exists():
        raise BadModelError(f"{path}: no such file")
    if not path.is_file():
        raise BadModelError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise BadModelError(f"{path}: empty file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadModelError(f"{path}: not a valid ONNX model (truncated or not ONNX): {exc}") from None
    if not model.graph.node or not model.opset_import or model.ir_version < 3:
        raise BadModelError(
            f"{path}: not a valid ONNX model (no graph nodes, opset imports or IR version)"
        )
    check_external_data(model, path)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise BadModelError(f"{path}: cannot read external data: {exc}") from None
    digest = sha256_file(path)
    logger.info("loaded %s (%d nodes, sha256 %s)", path, len(model.graph.node), digest[:12])
    return model, digest


def check_graph(path: Path) -> None:
    """ONNX's own structural checker; run after op support so unknown ops are listed first."""
    try:
        # By path: the checker then resolves external data itself and has no 2 GB proto limit.
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModelError(f"{path}: invalid ONNX graph: {first}") from None


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1
