"""ONNX export: both exporters match torch in onnxruntime, external data, TVM import, caching."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo import INPUT_NAMES, OUTPUT_NAME, build_reference, example_inputs, export_onnx
from banana.compiler.zoo.export import METADATA_KEY, read_metadata
from banana.compiler.zoo.registry import reference_onnx

# (model, dynamo, external_data): four exports cover both exporters, both models, external data.
CASES = [
    ("nano-dit-random", True, False),
    ("nano-dit-random", False, True),
    ("nano-unet", True, True),
    ("nano-unet", False, False),
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    out = {}
    for name, dynamo, ext in CASES:
        model = build_reference(name, seed=3)
        inputs = example_inputs(name, batch=2, seed=1)
        with torch.no_grad():
            ref = model(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).numpy()
        d = tmp_path_factory.mktemp(f"{name}-{dynamo}-{ext}")
        path = export_onnx(model, inputs, d / "m.onnx", dynamo=dynamo, external_data=ext)
        out[(name, dynamo, ext)] = (path, inputs, ref)
    return out


def _case_id(c):
    return f"{c[0]}-{'dynamo' if c[1] else 'ts'}-{'ext' if c[2] else 'inline'}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_onnxruntime_matches_torch(exports, case):
    path, inputs, ref = exports[case]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME]
    (out,) = sess.run(None, inputs)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    # static shapes, no opset-23 Attention op, weights in the side file iff requested
    model = onnx.load(str(path), load_external_data=False)
    for vi in list(model.graph.input) + list(model.graph.output):
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
    assert "Attention" not in {n.op_type for n in model.graph.node}
    data = path.with_name(path.name + ".data")
    n_external = sum(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if case[2]:
        assert data.is_file() and n_external > 10
        assert path.stat().st_size < data.stat().st_size / 10
    else:
        assert not data.exists() and n_external == 0
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_dit_export_shows_decomposed_gqa(exports):
    path = exports[("nano-dit-random", True, False)][0]
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Softmax" in ops and "Expand" in ops and ops.count("MatMul") >= 4


@pytest.mark.parametrize("case", CASES[:1] + CASES[2:], ids=["nano-dit-dynamo", "nano-unet-dynamo-ext", "nano-unet-ts"])
def test_tvm_relax_imports(exports, case):
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    path, inputs, _ = exports[case]
    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    sinfo = mod["main"].ret_ty  # TVM 0.27: StructInfo is now relax "types" (ret_ty / TensorType)
    assert isinstance(sinfo, relax.TensorType) and sinfo.dtype == "float32"
    assert [int(v) for v in sinfo.shape.values] == list(inputs["latent"].shape)


def test_tvm_imports_torchscript_dit(exports):
    from tvm.relax.frontend.onnx import from_onnx

    path = exports[("nano-dit-random", False, True)][0]
    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    assert [int(v) for v in mod["main"].ret_ty.shape.values] == [2, 1, 16, 16]


def test_export_is_deterministic_and_cached(tmp_path):
    a = reference_onnx("nano-unet", tmp_path / "a", dynamo=False)
    b = reference_onnx("nano-unet", tmp_path / "b", dynamo=False)
    assert a.read_bytes() == b.read_bytes()
    assert read_metadata(a)["banana.zoo.name"] == "nano-unet"
    mtime, key = a.stat().st_mtime_ns, read_metadata(a)[METADATA_KEY]
    assert reference_onnx("nano-unet", tmp_path / "a", dynamo=False) == a
    assert a.stat().st_mtime_ns == mtime  # reused, not rewritten
    other = reference_onnx("nano-unet", tmp_path / "a", dynamo=False, seed=1)  # new settings: re-export
    assert other == a and read_metadata(a)[METADATA_KEY] != key
    assert a.read_bytes() != b.read_bytes()


def test_export_rejects_bad_settings(tmp_path):
    model = build_reference("nano-unet")
    inputs = example_inputs("nano-unet")
    with pytest.raises(BadConfigError, match="opset"):
        export_onnx(model, inputs, tmp_path / "m.onnx", opset=23)
    with pytest.raises(BadConfigError, match="text"):
        export_onnx(model, {"latent": inputs["latent"], "timestep": inputs["timestep"]}, tmp_path / "m.onnx")


def _sdpa_copy(seed=3):
    from banana.compiler.zoo import DIT_CONFIGS, DiT

    model = DiT(DIT_CONFIGS["nano"], attention="sdpa")
    model.load_state_dict(build_reference("nano-dit-random", seed=seed).state_dict())
    return model.eval()


@pytest.mark.slow  # one more dynamo export (~10-20 s here); keeps the default run near a minute
def test_sdpa_dynamo_export_runs_and_imports(tmp_path):
    from tvm.relax.frontend.onnx import from_onnx

    model, inputs = _sdpa_copy(), example_inputs("nano-dit-random", batch=2)
    path = export_onnx(model, inputs, tmp_path / "sdpa.onnx")
    with torch.no_grad():
        ref = model(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).numpy()
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    from_onnx(onnx.load(str(path)))  # scalar Unsqueeze axes were vectorised for TVM


def test_sdpa_gqa_torchscript_export_is_a_one_line_error(tmp_path):
    from banana.compiler.errors import BadModelError

    with pytest.raises(BadModelError, match="torchscript ONNX export failed") as info:
        export_onnx(_sdpa_copy(), example_inputs("nano-dit-random"), tmp_path / "m.onnx", dynamo=False)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())
