"""Shared fixtures: tiny ONNX models built with onnx.helper (no exporter in the loop)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_mlp_model(path: Path, *, batch: int | str = 2, extra_nodes: list[onnx.NodeProto] | None = None,
                   opset: int = 18, seed: int = 0, extra_domains: tuple[str, ...] = ()) -> Path:
    """x[batch,8,16] -> MatMul -> Add -> Softmax -> y[batch,8,32]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((32,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "b"], ["h2"], name="add"),
        helper.make_node("Softmax", ["h2"], ["y"], name="softmax", axis=-1),
    ]
    nodes += extra_nodes or []
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 32])],
        [w, b],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains],
        producer_name="banana-tests",
    )
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def mlp_onnx(tmp_path: Path) -> Path:
    return make_mlp_model(tmp_path / "mlp.onnx")


@pytest.fixture
def mlp_external_onnx(tmp_path: Path) -> Path:
    """The MLP with its weights in a side file, as large exports store them."""
    directory = tmp_path / "ext"
    directory.mkdir()
    path = make_mlp_model(directory / "mlp.onnx")
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="mlp.onnx.data", size_threshold=0)
    return path


def relocate_external_data(model_path: Path, location: str) -> None:
    """Point every external-data reference of a saved model at ``location`` (crafted-model tests)."""
    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(model_path))


@pytest.fixture(scope="session", autouse=True)
def _pocl_cache_dir(tmp_path_factory):
    """Keep PoCL's kernel cache out of ~/.cache (read when PoCL first initialises; used in several folders)."""
    old = os.environ.get("POCL_CACHE_DIR")
    os.environ["POCL_CACHE_DIR"] = str(tmp_path_factory.mktemp("pocl-cache"))
    yield
    if old is None:
        os.environ.pop("POCL_CACHE_DIR", None)
    else:
        os.environ["POCL_CACHE_DIR"] = old
