"""`banana compile` on nano DiT QDQ models with 16-bit activations: integer kernels, bit-exact taps, onnxruntime.

Two models, both from the same short calibration as ``test_pipeline_integer.py`` (its fixtures and
``_check`` helper are reused):

- ``a16``: banana's own QDQ export of a plan that asks for INT16 activations on blocks 1 and 3
  (what the mixed-precision search picks on hexagon: int8 and int4 weights x int16 activations,
  including the 256-deep MLP down-projection, the longest sum a uint16 x int8 layer may have)
  and INT8 elsewhere. banana exports 16-bit activations as UINT16 with a zero point;
- ``ort16``: onnxruntime's ``quantize_static`` with ``QInt16`` activations: signed int16, and a
  QuantizeLinear after every layer, so the requantising epilogue writes int16 for the next layer.

Each compiles for ``host`` with integer taps; every integer tensor must equal banana's integer
reference (recomputed from the ONNX file) bit for bit, the output must be within one 8-bit output
step of onnxruntime running the same QDQ file, and the manifest must list the 16-bit layers as
integer kernels. The compiles take minutes (``slow``); the arm64 one runs under qemu-aarch64.

A small hand-built uint16 graph (Conv with zero-point padding, a requantising MatMul, an int4
MatMul) checks the compile-time re-bias quickly: the kernels are built for int16, carry no
column-sum pass, and outputs/taps still match onnxruntime/the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from banana.compiler.errors import UnsupportedOpError
from banana.compiler.passes.integer import IntegerLowering, LayerRecord
from banana.compiler.passes.integer_stage import precision_label
from banana.compiler.quantize.ort_baseline import CalibrationReader
from tests.compiler.test_pipeline_integer import _check, nano  # noqa: F401  (module fixture)

INT16_BLOCKS = ("blocks.1.", "blocks.3.")


def a16_plan(layers: list[str]) -> dict:
    """INT16 activations on two whole blocks (int4 block-32 weights on block 3's MLP), INT8 elsewhere."""
    from banana.compiler.quantize.fakequant import LayerPrecision

    plan = {}
    for n in layers:
        if n.startswith(INT16_BLOCKS):
            int4 = n.startswith("blocks.3.mlp.") or n.endswith("q_proj")
            plan[n] = LayerPrecision("int4" if int4 else "int8", "int16", 32 if n.startswith("blocks.3.mlp.") else 0)
        else:
            plan[n] = LayerPrecision("int8", "int8", 0)
    return plan



@pytest.fixture(scope="module")
def int16_models(nano, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from banana.compiler.quantize.calibrate import calibrate
    from banana.compiler.quantize.fakequant import QuantDenoiser, quantizable_layers
    from banana.compiler.quantize.qdq import export_qdq, find_layer_nodes
    from banana.compiler.quantize.ranges import activation_ranges

    root = tmp_path_factory.mktemp("qdq16")
    cal = calibrate(nano, steps=4, seeds=range(1000, 1008))
    r8, r16 = activation_ranges(cal, "mse"), activation_ranges(cal, "mse", bits=16)
    layers = quantizable_layers(nano)
    plan = a16_plan(layers)
    ranges = {n: (r16[n] if p.act == "int16" else r8[n]) for n, p in plan.items()}
    paths = {"a16": export_qdq(QuantDenoiser(nano, plan, ranges, cal.timesteps), root / "a16.onnx", step=1)}
    float_onnx = root / "a16.float.onnx"
    weights = {n: nano.get_submodule(n).weight.detach().numpy() for n in layers}
    nodes = find_layer_nodes(onnx.load(str(float_onnx)), weights)
    quantize_static(
        str(float_onnx), str(root / "ort16.onnx"), CalibrationReader(cal), quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt16, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_quantize=sorted(n.name for n, _ in nodes.values()),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    paths["ort16"] = root / "ort16.onnx"
    return paths


def _act_types(path: Path) -> set[int]:
    """Element types of the activation zero points of every QuantizeLinear in the file."""
    model = onnx.load(str(path))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    return {inits[n.input[2]] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}


@pytest.mark.slow
def test_nano_a16_plan_host_bit_exact_and_within_one_step(int16_models, tmp_path: Path) -> None:
    path = int16_models["a16"]
    assert _act_types(path) == {TensorProto.UINT8, TensorProto.UINT16}  # banana's export: unsigned + zero point
    manifest, steps = _check(path, tmp_path / "art")
    assert steps <= 1.0, steps
    layers = manifest["integer"]["layers"]
    assert len(layers) == 50 and all(r["kernel"].startswith("int_gemm") for r in layers)
    wide = [r for r in layers if r["act"] == "uint16"]
    assert len(wide) == 2 * 11  # every quantized layer of blocks 1 and 3 (names are the ONNX nodes')
    assert all(r["kernel"].startswith("int_gemm.x86") for r in wide)
    assert {(r["weight"], r["act"]) for r in layers} == {("int8", "uint16"), ("int4", "uint16"), ("int8", "uint8")}
    assert manifest["precision"] == "w4a16+w8a8+w8a16"
    # the MLP down-projection: one 256-long sum (the uint16 x int8 limit), and in block 3 two 32-long groups
    assert {(r["k"], r["k_group"]) for r in wide if r["n"] == 128 and r["k"] == 256} == {(256, 0), (256, 32)}


@pytest.mark.slow
def test_nano_ort_int16_host_requantises_to_int16(int16_models, tmp_path: Path) -> None:
    path = int16_models["ort16"]
    assert TensorProto.INT16 in _act_types(path)
    manifest, steps = _check(path, tmp_path / "art")
    assert steps <= 1.0, steps
    layers = manifest["integer"]["layers"]
    assert layers and all(r["act"] == "int16" for r in layers)
    assert manifest["precision"] == "w8a16"
    assert any(r["epilogue"] == "requant" for r in layers)


def test_k_beyond_the_int32_limit_names_the_layer(tmp_path: Path) -> None:
    """A uint16 x int8 layer summing 257 products can overflow int32: an error naming the node, or float."""
    from onnx import helper, numpy_helper

    from banana.compiler.passes.integer_match import match_integer_regions

    k = 257
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
             numpy_helper.from_array(np.array(5, np.uint16), "z"),
             numpy_helper.from_array(rng.integers(-127, 128, (k, 8)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(8, 0.02, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="long_matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedOpError, match=r"long_matmul.*overflow int32 \(at most 256"):
        match_integer_regions(model)
    assert [s.node for s in match_integer_regions(model, allow_float_fallback=True).skipped] == ["long_matmul"]


@pytest.mark.slow
def test_nano_a16_arm64_under_qemu_bit_exact(int16_models, tmp_path: Path) -> None:
    manifest, steps = _check(int16_models["a16"], tmp_path / "art", backend="cpu", soc="SM8650")
    assert manifest["run"]["executor"] == "qemu-aarch64"
    wide = [r for r in manifest["integer"]["layers"] if r["act"] == "uint16"]
    assert wide and all(r["kernel"] == "int_gemm.arm_smlal" for r in wide)
    assert steps <= 1.5, steps  # float ops differ from onnxruntime's by arm64 rounding (see test_pipeline_integer)


def uint16_model(path: Path) -> Path:
    """x -> Q/DQ(uint16) -> Conv(int8, pads 1) -> Relu -> [64, 16] -> Q/DQ(uint16) -> MatMul(int8) -> Q(uint16,
    requant) -> DQ -> MatMul(INT4, block 8) -> y [64, 6]. Zero points far from 32768 (and the Conv's padding
    with its zero point) make a wrong re-bias visible in every output."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    wc = rng.integers(-127, 128, (16, 2, 3, 3)).astype(np.int8)
    wm = rng.integers(-127, 128, (16, 16)).astype(np.int8)
    w4 = rng.integers(-8, 8, (16, 6)).astype(np.int8)
    f32 = np.float32
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("s0", np.array(4e-4, f32)), ("z0", np.array(9000, np.uint16)),
        ("wc", wc), ("sc", np.full(16, 0.004, f32)), ("bc", (rng.standard_normal(16) * 0.1).astype(f32)),
        ("shape", np.array([16, 64], np.int64)),
        ("s1", np.array(1e-4, f32)), ("z1", np.array(700, np.uint16)),
        ("wm", wm), ("sm", np.array(0.002, f32)),
        ("s2", np.array(3e-4, f32)), ("z2", np.array(52000, np.uint16)),
        ("s4", (rng.random((2, 6)) * 0.02 + 0.01).astype(f32)))]
    inits.append(helper.make_tensor("w4", TensorProto.INT4, w4.shape, w4.flatten().tolist()))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s0", "z0"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wc", "sc"], ["wcd"], axis=0),
        helper.make_node("Conv", ["xd", "wcd", "bc"], ["c"], pads=[1, 1, 1, 1], name="conv16"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["t"], perm=[1, 0]),
        helper.make_node("QuantizeLinear", ["t", "s1", "z1"], ["tq"]),
        helper.make_node("DequantizeLinear", ["tq", "s1", "z1"], ["td"]),
        helper.make_node("DequantizeLinear", ["wm", "sm"], ["wmd"]),
        helper.make_node("MatMul", ["td", "wmd"], ["mm"], name="matmul16"),
        helper.make_node("QuantizeLinear", ["mm", "s2", "z2"], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", "s2", "z2"], ["md"]),
        helper.make_node("DequantizeLinear", ["w4", "s4"], ["w4d"], axis=0, block_size=8),
        helper.make_node("MatMul", ["md", "w4d"], ["y"], name="matmul16_int4"),
    ]
    graph = helper.make_graph(nodes, "uint16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="banana-tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def test_uint16_rebias_folded_at_compile_time(tmp_path: Path) -> None:
    """uint16 layers get int16 kernels without a column-sum pass; outputs and taps still exact."""
    from banana.compiler.artifact import Artifact
    from banana.compiler.passes.integer_stage import import_with_integer_regions, integer_stage
    from banana.compiler.passes.integer_verify import check_taps, reference_regions
    from banana.compiler.pipeline import compile_model
    from banana.compiler.verify import onnxruntime_outputs
    from banana.targets.backends import get_backend
    from banana.targets.host import host_target

    path = uint16_model(tmp_path / "u16.onnx")
    imported, plan = import_with_integer_regions(path, None, "host")
    integer_stage(imported, plan, host_target())
    kernels = [f for _, f in imported.mod.functions.items() if f.attrs is not None and "banana.kernel" in f.attrs]
    assert len(kernels) == 3
    assert {str(f.params[0].dtype) for f in kernels} == {"int16"}
    assert not any('T.sblock("colsum")' in f.script() for f in kernels)  # no run-time pass over W

    result = compile_model(path, backend="host", out=tmp_path / "art", integer_taps=True)
    manifest = result.manifest
    assert {r["act"] for r in manifest["integer"]["layers"]} == {"uint16"}
    assert manifest["precision"] == "w4a16+w8a16"
    artifact = Artifact.open(tmp_path / "art")
    x = np.random.default_rng(5).standard_normal((1, 2, 8, 8)).astype(np.float32)
    outputs = get_backend("host").run(artifact, [x])
    want = onnxruntime_outputs(path, artifact.inputs, [x])[0]
    step = (want.max() - want.min()) / 255
    assert np.abs(outputs[0] - want).max() <= step, np.abs(outputs[0] - want).max() / step
    checks = check_taps(outputs[1:], manifest["integer"]["taps"], reference_regions(path))
    assert {(c.layer, c.kind) for c in checks} >= {("conv16", "a"), ("matmul16", "out"), ("matmul16_int4", "acc")}
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    a_taps = [v for v, t in zip(outputs[1:], manifest["integer"]["taps"], strict=True) if t["kind"] == "a"]
    assert a_taps and all(v.dtype == np.int16 for v in a_taps)  # the kernel's operand, re-biased


def test_precision_label_names_activation_width_when_not_8_bit() -> None:
    def lowering(*pairs: tuple[str, str]) -> IntegerLowering:
        return IntegerLowering(None, [], [], [LayerRecord("n", "MatMul", w, a, "k", "dequant") for w, a in pairs])

    assert precision_label(None) == "fp32"
    assert precision_label(lowering(("float32", "float32"))) == "fp32"
    assert precision_label(lowering(("int8", "uint8"), ("int4", "int8"), ("int8", "float32"))) == "int4+int8"
    assert precision_label(lowering(("int8", "uint16"))) == "w8a16"
    assert precision_label(lowering(("int4", "uint8"), ("int8", "int16"), ("int8", "int16"))) == "w4a8+w8a16"
    assert precision_label(lowering(("int8", "uint16"), ("int8", "uint8"), ("int4", "uint16"),
                                    ("float32", "float32"))) == "w4a16+w8a8+w8a16"


@pytest.mark.parametrize("zp", [0, 1234, 32768, 65535])
def test_rebias_reference_keeps_the_zero_point_corrected_sum(zp: int) -> None:
    """int16 operand + re-biased correction == sum (q - zp) * w in int64 (numpy), at the k limit."""
    from banana.compiler.quantize import integer_reference as ref

    rng = np.random.default_rng(zp)
    k = 256
    q = np.concatenate([rng.integers(0, 65536, (3, k)), np.full((1, k), 65535), np.zeros((1, k))]).astype(np.uint16)
    w = np.concatenate([rng.integers(-128, 128, (3, k)), np.full((1, k), -128)]).astype(np.int8)
    a = ref.gemm_operand(q, "uint16")
    assert a.dtype == np.int16 and ref.gemm_dtype("uint16") == "int16" and ref.gemm_dtype("int16") == "int16"
    assert np.array_equal(a.astype(np.int64), q.astype(np.int64) - 32768)
    got = ref.accumulate(a, w).astype(np.int64) + ref.zero_point_correction(w, ref.gemm_zero_point(zp, "uint16"))
    want = (q.astype(np.int64) - zp) @ w.astype(np.int64).T
    assert np.array_equal(got, want)
    assert ref.gemm_zero_point(zp, "uint8") == zp  # 8-bit codes go to the kernel unchanged
    assert ref.gemm_operand(np.arange(4, dtype=np.uint8), "uint8").dtype == np.uint8
