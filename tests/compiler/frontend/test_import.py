from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from banana.compiler.errors import BadConfigError, BadModelError, UnsupportedOpError
from banana.compiler.frontend import import_onnx, parse_shape_override
from banana.compiler.frontend.op_support import find_unsupported_nodes
from tests.conftest import make_mlp_model, relocate_external_data


def test_import_keeps_weights_outside_and_orders_inputs_first(mlp_onnx: Path) -> None:
    model = import_onnx(mlp_onnx)
    assert [s.name for s in model.inputs] == ["x"]
    assert model.inputs[0].shape == (2, 8, 16)
    assert model.outputs[0].shape == (2, 8, 32)
    params = model.mod["main"].params
    assert len(params) == 1 + len(model.weights)
    ref = onnx.load(str(mlp_onnx))
    originals = {i.name: onnx.numpy_helper.to_array(i) for i in ref.graph.initializer}
    assert sorted(w.shape for w in model.weights) == sorted(a.shape for a in originals.values())
    assert len(model.sha256) == 64


def test_external_data_is_loaded(mlp_external_onnx: Path) -> None:
    model = import_onnx(mlp_external_onnx)
    assert model.weight_bytes == (16 * 32 + 32) * 4


def test_truncated_file_is_bad_model(tmp_path: Path, mlp_onnx: Path) -> None:
    data = mlp_onnx.read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadModelError, match="broken.onnx"):
        import_onnx(broken)


def test_non_onnx_file_is_bad_model(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(BadModelError, match="notes.onnx"):
        import_onnx(text)


def test_every_unsupported_node_is_listed_at_once(tmp_path: Path) -> None:
    extra = [
        helper.make_node("FrobnicateA", ["y"], ["z1"], name="weird_a", domain="com.example"),
        helper.make_node("NoSuchOp", ["y"], ["z2"], name="weird_b"),
    ]
    path = make_mlp_model(tmp_path / "odd.onnx", extra_nodes=extra, extra_domains=("com.example",))
    model = onnx.load(str(path))
    found = {n.name for n in find_unsupported_nodes(model)}
    assert found == {"weird_a", "weird_b"}
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(path)
    message = str(info.value)
    assert "weird_a" in message and "weird_b" in message and "FrobnicateA" in message
    assert "com.example" in message and "opset 18" in message
    assert "\n" not in message


def test_missing_external_data_file(mlp_external_onnx: Path) -> None:
    (mlp_external_onnx.parent / "mlp.onnx.data").unlink()
    with pytest.raises(BadModelError, match="not found"):
        import_onnx(mlp_external_onnx)


def test_external_data_escaping_folder_is_refused(tmp_path: Path, mlp_external_onnx: Path) -> None:
    outside = tmp_path / "secret.bin"
    shutil.copy(mlp_external_onnx.parent / "mlp.onnx.data", outside)
    relocate_external_data(mlp_external_onnx, "../secret.bin")
    with pytest.raises(BadModelError, match="escapes the model folder"):
        import_onnx(mlp_external_onnx)


def test_external_data_shorter_than_shape_is_refused(mlp_external_onnx: Path) -> None:
    data = mlp_external_onnx.parent / "mlp.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(BadModelError, match="beyond the end"):
        import_onnx(mlp_external_onnx)


def test_dynamic_shape_needs_override(tmp_path: Path) -> None:
    path = make_mlp_model(tmp_path / "dyn.onnx", batch="batch")
    with pytest.raises(BadConfigError, match="input 'x' has dynamic axis 0"):
        import_onnx(path)
    model = import_onnx(path, {"x": (3, 8, 16)})
    assert model.inputs[0].shape == (3, 8, 16)
    assert model.outputs[0].shape == (3, 8, 32)


def test_override_of_wrong_rank_names_input_and_rank(tmp_path: Path) -> None:
    path = make_mlp_model(tmp_path / "dyn.onnx", batch="batch")
    with pytest.raises(BadConfigError, match=r"input 'x' has rank 3, got 2"):
        import_onnx(path, {"x": (3, 8)})


def test_override_of_unknown_input(mlp_onnx: Path) -> None:
    with pytest.raises(BadConfigError, match="has no input 'latent'"):
        import_onnx(mlp_onnx, {"latent": (1, 2)})


@pytest.mark.parametrize("text", ["x", "x=", "=1,2", "x=1,a", "x=0,2"])
def test_bad_shape_text(text: str) -> None:
    with pytest.raises(BadConfigError):
        parse_shape_override(text)


def test_shape_text() -> None:
    assert parse_shape_override("latent=1,4,16,16") == ("latent", (1, 4, 16, 16))


def test_integer_initializers_do_not_become_weights(tmp_path: Path) -> None:
    shape = onnx.numpy_helper.from_array(np.array([2, 256], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256])],
        [shape],
    )
    path = tmp_path / "reshape.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    model = import_onnx(path)
    assert model.weights == []
    assert model.outputs[0].shape == (2, 256)
