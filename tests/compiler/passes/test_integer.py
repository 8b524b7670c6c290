"""Quantized layers -> integer kernels on small QDQ graphs (host): matching, errors, bit-exact taps.

Golden values: onnxruntime running the QDQ file with optimisations off (the model's ONNX
semantics) for the outputs; banana's integer reference -- itself checked against onnxruntime in
tests/compiler/quantize/test_integer_reference.py -- recomputed from the ONNX file's integer
weights for the integer taps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.artifact import Artifact
from banana.compiler.errors import UnsupportedOpError
from banana.compiler.passes.integer_match import match_integer_regions
from banana.compiler.passes.integer_verify import check_taps, reference_regions
from banana.compiler.pipeline import compile_model
from banana.compiler.verify import onnxruntime_outputs
from banana.targets.backends import get_backend
from tests.conftest import make_mlp_model


def _init(name: str, value: np.ndarray, dtype: int | None = None) -> onnx.TensorProto:
    if dtype is None:
        return numpy_helper.from_array(value, name)
    return helper.make_tensor(name, dtype, value.shape, value.flatten().tolist())


def banana_form_model(path: Path, *, weight_zp: int = 0) -> Path:
    """x -> Q/DQ -> Conv(int8, bias, pads) -> Relu -> [64, 16] -> Q/DQ -> MatMul(packed INT4, block 8) -> Add
    -> Q/DQ -> Gemm(int8, transB, bias) -> Q (requant) -> DQ -> MatMul(int8, per tensor) -> y [64, 12].

    Scales come from the float graph's own ranges (numpy forward pass), so no tensor is mostly saturated.
    """
    rng = np.random.default_rng(0)
    wc = rng.integers(-127, 128, (16, 2, 3, 3)).astype(np.int8)
    sc = np.full(16, 0.004, np.float32) * (1 + rng.random(16).astype(np.float32))
    bc = rng.standard_normal(16).astype(np.float32) * 0.1
    w4 = rng.integers(-8, 8, (16, 24)).astype(np.int8)  # MatMul weight [K, N], block-wise along K
    s4 = (rng.random((2, 24)).astype(np.float32) * 0.02 + 0.01).astype(np.float32)
    b4 = rng.standard_normal(24).astype(np.float32) * 0.1
    wg = rng.integers(-127, 128, (10, 24)).astype(np.int8)  # Gemm transB: [N, K]
    sg = (rng.random(10).astype(np.float32) * 0.004 + 0.002).astype(np.float32)
    bg = rng.standard_normal(10).astype(np.float32) * 0.1
    wm = rng.integers(-127, 128, (10, 12)).astype(np.int8)
    sm = np.float32(0.01)
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)

    # numpy float forward pass (for the activation scales only)
    def conv(v):
        xp = np.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1)))
        w = wc.astype(np.float32) * sc[:, None, None, None]
        out = np.zeros((1, 16, 8, 8), np.float32)
        for i in range(3):
            for j in range(3):
                out += np.einsum("bchw,oc->bohw", xp[:, :, i:i + 8, j:j + 8], w[:, :, i, j])
        return out + bc[None, :, None, None]

    h1 = np.maximum(conv(x), 0).reshape(16, 64).T
    h2 = h1 @ (w4.astype(np.float32) * np.repeat(s4, 8, axis=0)) + b4
    h3 = h2 @ (wg.astype(np.float32) * sg[:, None]).T + bg

    def qparams(v):
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        s = np.float32((hi - lo) / 255)
        return s, np.uint8(round(-lo / s))

    (s0, z0), (s1, z1), (s2, z2), (s3, z3) = qparams(x), qparams(h1), qparams(h2), qparams(h3)
    inits = [
        _init("s0", np.array(s0)), _init("z0", np.array(z0)), _init("s1", np.array(s1)), _init("z1", np.array(z1)),
        _init("s2", np.array(s2)), _init("z2", np.array(z2)), _init("s3", np.array(s3)), _init("z3", np.array(z3)),
        _init("wc", wc), _init("sc", sc), _init("wc_zp", np.full(16, weight_zp, np.int8)), _init("bc", bc),
        _init("w4", w4, TensorProto.INT4), _init("s4", s4), _init("b4", b4),
        _init("wg", wg), _init("sg", sg), _init("bg", bg), _init("wm", wm), _init("sm", np.array(sm)),
        _init("shape", np.array([16, 64], np.int64)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s0", "z0"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wc", "sc", "wc_zp"], ["wcd"], axis=0),
        helper.make_node("Conv", ["xd", "wcd", "bc"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["t"], perm=[1, 0]),
        helper.make_node("QuantizeLinear", ["t", "s1", "z1"], ["tq"]),
        helper.make_node("DequantizeLinear", ["tq", "s1", "z1"], ["td"]),
        helper.make_node("DequantizeLinear", ["w4", "s4"], ["w4d"], axis=0, block_size=8),
        helper.make_node("MatMul", ["td", "w4d"], ["m"], name="matmul_int4"),
        helper.make_node("Add", ["m", "b4"], ["m2"], name="bias_add"),
        helper.make_node("QuantizeLinear", ["m2", "s2", "z2"], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", "s2", "z2"], ["md"]),
        helper.make_node("DequantizeLinear", ["wg", "sg"], ["wgd"], axis=0),
        helper.make_node("Gemm", ["md", "wgd", "bg"], ["g"], transB=1, name="gemm"),
        helper.make_node("QuantizeLinear", ["g", "s3", "z3"], ["gq"]),
        helper.make_node("DequantizeLinear", ["gq", "s3", "z3"], ["gd"]),
        helper.make_node("DequantizeLinear", ["wm", "sm"], ["wmd"]),
        helper.make_node("MatMul", ["gd", "wmd"], ["y"], name="matmul_tail"),
    ]
    graph = helper.make_graph(nodes, "banana-form", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="banana-tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _compile_and_check(path: Path, out: Path) -> dict:
    result = compile_model(path, backend="host", out=out, integer_taps=True)
    artifact = Artifact.open(out)
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal(s.shape).astype(np.float32) for s in artifact.inputs]
    outputs = get_backend("host").run(artifact, inputs)
    reference = onnxruntime_outputs(path, artifact.inputs, inputs)
    for got, want in zip(outputs, reference, strict=False):
        step = (want.max() - want.min()) / 255
        assert np.abs(got - want).max() <= step + 1e-6, "output beyond one quantisation step of onnxruntime"
    checks = check_taps(outputs[len(reference):], result.manifest["integer"]["taps"], reference_regions(path))
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    return result.manifest


def test_banana_form_conv_int4_gemm_requant_chain_bit_exact(tmp_path: Path) -> None:
    path = banana_form_model(tmp_path / "m.onnx")
    manifest = _compile_and_check(path, tmp_path / "art")
    layers = {r["name"]: r for r in manifest["integer"]["layers"]}
    assert set(layers) == {"conv", "matmul_int4", "gemm", "matmul_tail"}
    assert layers["matmul_int4"]["weight"] == "int4" and layers["matmul_int4"]["k_group"] == 8
    assert layers["gemm"]["epilogue"] == "requant" and layers["conv"]["epilogue"] == "dequant"
    assert all(r["kernel"].startswith("int_gemm") for r in layers.values())
    assert manifest["precision"] == "int4+int8" and manifest["integer"]["float_fallbacks"] == []
    kinds = {(t["layer"], t["kind"]) for t in manifest["integer"]["taps"]}
    assert (2, "out") in kinds and (0, "x") in kinds  # the requant output and a float->int quantize are checked
    # no float copy of a quantized weight in the artifact: every integer weight is int8/uint8
    names = manifest["weights"]["names"]
    weights = Artifact.open(tmp_path / "art").load_weights()
    stored = {n: w for n, w in zip(names, weights, strict=True) if n.endswith("_w")}
    assert len(stored) == 4 and all(w.dtype in (np.int8, np.uint8) for w in stored.values())
    assert stored["banana_int_1_w"].shape == (24, 8)  # int4, two per byte


def test_onnxruntime_quantize_static_mlp_compiles_to_integer_kernels(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    float_path = make_mlp_model(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(3)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": rng.standard_normal((2, 8, 16)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    qdq = tmp_path / "mlp.qdq.onnx"
    quantize_static(str(float_path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    manifest = _compile_and_check(qdq, tmp_path / "art")
    (layer,) = manifest["integer"]["layers"]
    assert layer["op"] == "MatMul" and layer["weight"] == "int8" and layer["act"] == "uint8"


def test_asymmetric_weights_are_a_named_error_or_a_listed_fallback(tmp_path: Path) -> None:
    path = banana_form_model(tmp_path / "m.onnx", weight_zp=3)
    with pytest.raises(UnsupportedOpError, match="quantized layer 'conv'.*zero point"):
        compile_model(path, backend="host", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    match = match_integer_regions(onnx.load(str(path)), allow_float_fallback=True)
    assert [s.node for s in match.skipped] == ["conv"] and len(match.regions) == 3


def test_backend_without_integer_kernels_names_the_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from banana.compiler.passes import integer_stage

    monkeypatch.delitem(integer_stage.INTEGER_BACKENDS, "adreno")  # every real backend has kernels now
    path = banana_form_model(tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOpError, match="quantized layer 'conv'.*backend 'adreno'"):
        compile_model(path, backend="adreno", soc="SM8650", out=tmp_path / "bad")


def test_placeholders_replace_regions_and_drop_float_weights(tmp_path: Path) -> None:
    model = onnx.load(str(banana_form_model(tmp_path / "m.onnx")))
    match = match_integer_regions(model)
    ops = [n.op_type for n in match.model.graph.node]
    assert "Gemm" not in ops and ops.count("DequantizeLinear") == 4  # only the activation DQs remain
    assert not any(t.data_type in (TensorProto.INT8, TensorProto.INT4) for t in match.model.graph.initializer)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "x"


def test_weight_only_int4_layer_keeps_float_activations(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w = rng.integers(-8, 8, (32, 20)).astype(np.int8)  # MatMul weight [K, N]
    s = (rng.random(20).astype(np.float32) * 0.05 + 0.01).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["h"], name="wo_matmul"),
             helper.make_node("Add", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "wo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 20])],
                              [_init("w", w), _init("s", s), _init("b", b)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / "wo.onnx"
    onnx.save_model(model, str(path))
    result = compile_model(path, backend="host", out=tmp_path / "art", verify=True)
    (layer,) = result.manifest["integer"]["layers"]
    assert (layer["epilogue"], layer["weight"], layer["act"]) == ("weight-only", "int4", "float32")
    assert result.verify.ok  # one 8-bit step of the output (integer-only artifact)
    assert result.manifest["weights"]["bytes"] < 0.2 * (w.size * 4 + b.nbytes)  # int4 packed + scales vs fp32


def test_weight_only_conv_runs_im2col_and_the_row_kernel(tmp_path: Path) -> None:
    """Weight-only Conv (float activations): the matcher takes it, so the host lowering must too."""
    rng = np.random.default_rng(6)
    w = rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8)
    s = (rng.random(6).astype(np.float32) * 0.02 + 0.005).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], axis=0),
             helper.make_node("Conv", ["x", "wd", "b"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1], name="wo_conv")]
    graph = helper.make_graph(nodes, "woc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 5, 8])],
                              [_init("w", w), _init("s", s), _init("b", b)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / "woc.onnx"
    onnx.save_model(model, str(path))
    result = compile_model(path, backend="host", out=tmp_path / "art", verify=True, rtol=1e-5)
    (layer,) = result.manifest["integer"]["layers"]
    assert (layer["op"], layer["epilogue"], layer["weight"]) == ("Conv", "weight-only", "int8")
    assert result.verify.ok, result.verify  # onnxruntime on the QDQ file is the reference


def test_cli_names_the_layer_and_takes_the_fallback_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from banana.compiler.cli import main

    path = banana_form_model(tmp_path / "m.onnx", weight_zp=3)
    code = main(["compile", str(path), "--backend", "host", "-o", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'conv'" in err and "--allow-float-fallback" in err
    assert not (tmp_path / "bad").exists()
    code = main(["compile", str(path), "--backend", "host", "-o", str(tmp_path / "ok"), "--allow-float-fallback"])
    assert code == 0
    manifest = Artifact.open(tmp_path / "ok").manifest
    assert manifest["integer"]["float_fallbacks"] == ["conv"]
    assert {r["name"]: r["epilogue"] for r in manifest["integer"]["layers"]}["conv"] == "float-fallback"


def test_packed_epilogue_reads_back_every_constant_bit_for_bit() -> None:
    """EpilogueLayout.load inside a compiled kernel returns the arrays pack_epilogue was given (NaN bits too)."""
    import tvm
    from tvm import te

    from banana.compiler.passes.integer import EpilogueLayout, pack_epilogue

    rng = np.random.default_rng(0)
    scale = rng.standard_normal((6, 3)).astype(np.float32)
    scale[0, 0] = np.float32("nan")
    parts = {"corr": rng.integers(-2**31, 2**31 - 1, (6, 3), dtype=np.int32), "scale": scale,
             "bias": rng.standard_normal(6).astype(np.float32), "zp": np.array([-7], np.int32)}
    packed = pack_epilogue(parts)
    assert packed.dtype == np.int32 and packed.size == 6 * 3 * 2 + 6 + 1
    layout = EpilogueLayout.of(parts)
    epi = te.placeholder(packed.shape, "int32", name="epi")
    outs = [te.compute((6, 3), lambda j, g: layout.load(epi, "corr", j, g), name="corr"),
            te.compute((6, 3), lambda j, g: layout.load(epi, "scale", j, g), name="scale"),
            te.compute((6,), lambda j: layout.load(epi, "bias", j), name="bias"),
            te.compute((1,), lambda i: layout.load(epi, "zp", i), name="zp")]
    lib = tvm.compile(te.create_prim_func([epi, *outs]), target="llvm")
    got = [tvm.runtime.tensor(np.zeros(a.shape, a.dtype)) for a in parts.values()]
    lib(tvm.runtime.tensor(packed), *got)
    for (name, want), have in zip(parts.items(), got, strict=True):
        assert have.numpy().tobytes() == want.tobytes(), name
    assert "zp" in layout and "mult" not in layout
    with pytest.raises(TypeError, match="'w'.*int8"):
        pack_epilogue({"w": np.zeros(3, np.int8)})


def test_integer_layers_store_one_packed_epilogue(tmp_path: Path) -> None:
    """Per-channel constants of an integer-activation layer travel as one int32 ``epi`` parameter
    (grouped layers keep corr/scale/bias); quantize kernels take their scale as a tensor."""
    from banana.compiler.passes.integer_stage import import_with_integer_regions, integer_stage
    from banana.targets.host import host_target

    path = banana_form_model(tmp_path / "m.onnx")
    imported, plan = import_with_integer_regions(path, None, "host")
    lowering = integer_stage(imported, plan, host_target())
    names = set(imported.weight_names)
    assert {"banana_int_0_w", "banana_int_0_epi", "banana_int_2_epi", "banana_int_3_epi"} <= names
    assert {"banana_int_1_corr", "banana_int_1_scale"} <= names  # int4, block 8: grouped
    assert not {n for n in names if n.endswith(("_cb", "_mult")) or n == "banana_int_0_corr"}
    assert lowering is not None
    quantize = [f for g, f in imported.mod.functions_items() if g.name_hint.startswith("quantize_onnx")]
    assert quantize and all(len(f.params) == 3 for f in quantize)  # x, [scale, zp], out


# -- per-step activation scales (banana's multi-step export: Gather(table [S], step)) -------------------------

STEP_FACTORS = ((1.0, 0), (1.3, 3), (0.8, -2))  # per step: scale factor, zero point shift


def stepped_model(path: Path, *, step: int | None = None) -> Path:
    """:func:`banana_form_model` with every activation scale and zero point gathered from a [3] table.

    ``step=None``: gathered by an int64 scalar input ``step`` (the multi-step export); ``step=i``: by a
    constant index ``i`` (what the matcher must fold to step ``i``'s constants). The tables scale the
    float ranges by up to 1.3 and shift zero points, so every step quantizes differently.
    """
    model = onnx.load(str(banana_form_model(path.with_name(path.stem + ".base.onnx"))))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    gathers = []
    index = "step"
    if step is not None:
        g.initializer.append(_init("step_const", np.array(step, np.int64)))
        index = "step_const"
    for i in range(4):
        s = float(numpy_helper.to_array(inits[f"s{i}"]))
        z = int(numpy_helper.to_array(inits[f"z{i}"]))
        st = np.array([s * f for f, _ in STEP_FACTORS], np.float32)
        zt = np.array([min(max(z + d, 0), 255) for _, d in STEP_FACTORS], np.uint8)
        g.initializer.remove(inits[f"s{i}"])
        g.initializer.remove(inits[f"z{i}"])
        g.initializer.extend([_init(f"s{i}_table", st), _init(f"z{i}_table", zt)])
        gathers += [helper.make_node("Gather", [f"s{i}_table", index], [f"s{i}"], axis=0, name=f"s{i}_gather"),
                    helper.make_node("Gather", [f"z{i}_table", index], [f"z{i}"], axis=0, name=f"z{i}_gather")]
    nodes = gathers + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    if step is None:
        g.input.append(helper.make_tensor_value_info("step", TensorProto.INT64, []))
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def test_gathered_scales_become_per_step_tables_and_constant_indices_constants(tmp_path: Path) -> None:
    stepped = match_integer_regions(onnx.load(str(stepped_model(tmp_path / "s.onnx"))))
    fixed = match_integer_regions(onnx.load(str(stepped_model(tmp_path / "s1.onnx", step=1))))
    assert [r.steps for r in stepped.regions] == [3, 3, 3, 3] and [r.steps for r in fixed.regions] == [0] * 4
    assert {r.step_input for r in stepped.regions} == {"step"}
    gemm = stepped.regions[2]
    assert gemm.node == "gemm" and gemm.requant_table is not None  # the output scale is a table too
    for r, f in zip(stepped.regions, fixed.regions, strict=True):
        one = r.at_step(1)
        assert (one.act, one.requant) == (f.act, f.requant) and one.steps == 0
    # the gathered-scale Q/DQ pairs in front of the regions are gone (the regions quantize), except
    # the one behind the requantizing Gemm, which its integer epilogue absorbs
    ops = [n.op_type for n in stepped.model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and "step" in [i.name for i in stepped.model.graph.input]


def test_per_step_scales_compile_to_one_model_bit_exact_per_step(tmp_path: Path) -> None:
    """One artifact with a ``step`` input: per step, taps bit-exact against the reference with that step's
    scales, output within one step of onnxruntime, and equal bit for bit to the constant-scale build."""
    path = stepped_model(tmp_path / "s.onnx")
    result = compile_model(path, backend="host", out=tmp_path / "art", integer_taps=True)
    artifact = Artifact.open(tmp_path / "art")
    assert [s.name for s in artifact.inputs] == ["x", "step"] and artifact.inputs[1].dtype == "int64"
    epi = dict(zip(result.manifest["weights"]["names"], artifact.load_weights(), strict=True))["banana_int_0_epi"]
    assert epi.shape[0] == len(STEP_FACTORS)  # one row of epilogue constants per step
    regions = reference_regions(path)
    x = np.random.default_rng(7).standard_normal(artifact.inputs[0].shape).astype(np.float32)
    outputs = {}
    for step in range(len(STEP_FACTORS)):
        inputs = [x, np.array(step, np.int64)]
        got = get_backend("host").run(artifact, inputs)
        want = onnxruntime_outputs(path, artifact.inputs, inputs)[0]
        assert np.abs(got[0] - want).max() <= (want.max() - want.min()) / 255 + 1e-6, step
        checks = check_taps(got[1:], result.manifest["integer"]["taps"], regions, step=step)
        assert len(checks) >= 10 and all(c.ok for c in checks), (step, [c for c in checks if not c.ok])
        outputs[step] = got[0]
    assert not np.array_equal(outputs[0], outputs[1])  # the step does select different scales
    with pytest.raises(ValueError, match="needs the run's step"):
        check_taps(got[1:], result.manifest["integer"]["taps"], regions)
    for step in (0, 2):  # the same arithmetic as a constant-scale build of that step: the same bits
        fixed = stepped_model(tmp_path / f"s{step}.onnx", step=step)
        compile_model(fixed, backend="host", out=tmp_path / f"art{step}")
        (y,) = get_backend("host").run(Artifact.open(tmp_path / f"art{step}"), [x])
        assert np.array_equal(y, outputs[step]), step


def test_step_out_of_range_is_a_run_time_error(tmp_path: Path) -> None:
    path = stepped_model(tmp_path / "s.onnx")
    compile_model(path, backend="host", out=tmp_path / "art")
    artifact = Artifact.open(tmp_path / "art")
    x = np.zeros(artifact.inputs[0].shape, np.float32)
    for bad in (len(STEP_FACTORS), -1):
        with pytest.raises(Exception, match="'step' is out of range.*steps 0..2"):
            get_backend("host").run(artifact, [x, np.array(bad, np.int64)])


def test_per_step_scales_on_adreno_name_the_layer(tmp_path: Path) -> None:
    from banana.compiler.passes.integer_stage import import_with_integer_regions

    with pytest.raises(UnsupportedOpError, match="quantized layer 'conv'.*per-step.*'adreno'"):
        import_with_integer_regions(stepped_model(tmp_path / "s.onnx"), None, "adreno")


@pytest.mark.slow
def test_per_step_scales_compile_for_hexagon(tmp_path: Path) -> None:
    """Same lowering on Hexagon (HVX integer kernels; the whole model cannot run on this machine)."""
    result = compile_model(stepped_model(tmp_path / "s.onnx"), backend="hexagon", soc="SM8650", out=tmp_path / "art")
    layers = result.manifest["integer"]["layers"]
    assert len(layers) == 4 and all(r["kernel"].startswith("int_gemm_hexagon") for r in layers)
    assert "TVMFFIErrorSetRaisedFromCStr" in (tmp_path / "art" / result.manifest["build"]["assembly"]).read_text()
