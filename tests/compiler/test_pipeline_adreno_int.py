"""QDQ models on --backend adreno: every quantized layer runs wo_gemm_adreno (weight-only), checked on PoCL.

A small hand-built QDQ graph covers the layer kinds (W8A8 MatMul, weight-only int4 block-wise MatMul
behind an fp16 Cast pair, int8 Gemm(transB) with bias, int8 Conv); the nano DiT's weight-only plan
and W8A8 plan run end to end (slow). References are onnxruntime on the same QDQ file.

Tolerances, and why: a dequantised weight is one correctly rounded fp32 multiply
``float(code) * scale`` in the kernel's registers and in onnxruntime's DequantizeLinear, so both
use the same fp32 weights, and without fp16 activations they differ only in float summation order
(rel 1e-5 here; measured 4.4e-7 on the nano DiT with fp32 activations). With the plan's fp16
activations (Cast to float16 and back) a difference of one fp32 ulp upstream flips an fp16
rounding now and then: onnxruntime itself moves by 3.3e-4 (max rel) on the nano DiT when
``latent`` moves by one fp32 ulp, so there the bound is 1e-3 (two fp16 ulps, 2**-10). W8A8: the
activation QDQ stays float fake-quant, a flip moves one activation by one 8-bit step, so the
bound is verify's one 8-bit step of the output range.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.errors import BadConfigError, ToolchainError
from banana.compiler.passes.integer_adreno import WO_VARIANTS, round_to_fp16_te
from banana.compiler.passes.integer_stage import import_with_integer_regions, integer_stage
from banana.compiler.verify import onnxruntime_outputs, random_inputs
from banana.targets.opencl import adreno_target


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_value"))


def _codes(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    lim = 7 if bits == 4 else 127
    return rng.integers(-lim - 1, lim, size=shape, endpoint=True).astype(np.int8)


def tiny_qdq(path: Path, *, fp16_casts: bool = True, seed: int = 0) -> Path:
    """x[1,8,64] -> W8A8 MatMul(int8 per channel)+bias -> [Cast16, Cast32] -> MatMul(int4, blocks of 16)
    -> Relu -> Reshape[8,32] -> [Cast pair] -> Gemm(transB, int8, bias) = y[8,24];  img[1,4,8,8] ->
    Conv(int8 per channel, 3x3, pad 1) = z[1,16,8,8]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name: str, arr: np.ndarray, dtype: int | None = None) -> str:
        if dtype is None:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            inits.append(helper.make_tensor(name, dtype, arr.shape, arr.flatten().tolist()))
        return name

    def weight_dq(name: str, codes: np.ndarray, scale: np.ndarray, axis: int, block: int = 0, int4: bool = False):
        dt = TensorProto.INT4 if int4 else None
        q = init(f"{name}_q", codes, dt)
        s = init(f"{name}_s", scale.astype(np.float32))
        z = init(f"{name}_z", np.zeros(scale.shape, np.int8), dt)
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{name}_dq"], name=f"{name}_dq", **attrs))
        return f"{name}_dq"

    def cast_pair(src: str, name: str) -> str:
        if not fp16_casts:
            return src
        nodes.append(helper.make_node("Cast", [src], [f"{name}_16"], to=TensorProto.FLOAT16, name=f"{name}_c16"))
        nodes.append(helper.make_node("Cast", [f"{name}_16"], [f"{name}_32"], to=TensorProto.FLOAT, name=f"{name}_c32"))
        return f"{name}_32"

    # layer 1: W8A8 (activation QDQ uint8, weight int8 per output channel)
    init("xs", np.array(0.05, np.float32))
    init("xz", np.array(128, np.uint8))
    nodes.append(helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="x_q"))
    nodes.append(helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"], name="x_dq"))
    w1 = weight_dq("w1", _codes(rng, (64, 48), 8), rng.random(48) * 0.01 + 1e-3, axis=1)
    nodes.append(helper.make_node("MatMul", ["xdq", w1], ["h1"], name="l1_w8a8"))
    init("b1", rng.standard_normal(48).astype(np.float32))
    nodes.append(helper.make_node("Add", ["h1", "b1"], ["h1b"], name="l1_bias"))
    # layer 2: weight-only int4, block 16 along K
    a2 = cast_pair("h1b", "l2_in")
    w2 = weight_dq("w2", _codes(rng, (48, 32), 4), rng.random((3, 32)) * 0.05 + 1e-3, axis=0, block=16, int4=True)
    nodes.append(helper.make_node("MatMul", [a2, w2], ["h2"], name="l2_wo_int4"))
    nodes.append(helper.make_node("Relu", ["h2"], ["h2r"], name="relu"))
    nodes.append(_const("shape", np.array([8, 32], np.int64)))
    nodes.append(helper.make_node("Reshape", ["h2r", "shape"], ["h2f"], name="flatten"))
    # layer 3: weight-only int8 Gemm(transB) with bias
    a3 = cast_pair("h2f", "l3_in")
    w3 = weight_dq("w3", _codes(rng, (24, 32), 8), rng.random(24) * 0.02 + 1e-3, axis=0)
    init("b3", rng.standard_normal(24).astype(np.float32))
    nodes.append(helper.make_node("Gemm", [a3, w3, "b3"], ["y"], name="l3_wo_gemm", transB=1))
    # layer 4: weight-only int8 Conv
    w4 = weight_dq("w4", _codes(rng, (16, 4, 3, 3), 8), rng.random(16) * 0.02 + 1e-3, axis=0)
    nodes.append(helper.make_node("Conv", ["img", w4], ["z"], name="l4_wo_conv", kernel_shape=[3, 3],
                                  pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "tiny_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 24]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 8, 8])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="banana-tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _lower(path: Path, variant: str | None = None):
    imported, plan = import_with_integer_regions(path, None, "adreno", variant=variant)
    lowering = integer_stage(imported, plan, adreno_target())
    return imported, lowering


# -- fast: the matcher/lowering decision --------------------------------------------------------------------

def test_every_quantized_layer_lowers_to_wo_gemm_adreno(tmp_path: Path) -> None:
    imported, lowering = _lower(tiny_qdq(tmp_path / "tiny.onnx"))
    layers = {r.name: r for r in lowering.layers}
    assert set(layers) == {"l1_w8a8", "l2_wo_int4", "l3_wo_gemm", "l4_wo_conv"}
    assert {n: r.kernel for n, r in layers.items()} == {
        "l1_w8a8": "wo_gemm_adreno.int8.fp32", "l2_wo_int4": "wo_gemm_adreno.int4.fp32",
        "l3_wo_gemm": "wo_gemm_adreno.int8.fp32", "l4_wo_conv": "wo_gemm_adreno.int8.fp32"}
    assert all(r.epilogue == "weight-only" and r.act == "float32" for r in layers.values())
    assert (layers["l2_wo_int4"].k_group, layers["l4_wo_conv"].k) == (16, 36)
    # the W8A8 layer says that its activation QDQ stays float fake-quant; the others say nothing
    assert "fake-quant" in (layers["l1_w8a8"].reason or "")
    assert all(layers[n].reason is None for n in ("l2_wo_int4", "l3_wo_gemm", "l4_wo_conv"))
    # weights stored packed: int8 [n, k], int4 two per byte [n, k/2]; no float weight matrix anywhere
    stored = dict(zip(imported.weight_names, imported.weights, strict=True))
    w = {k: v for k, v in stored.items() if k.endswith("_w")}
    assert sorted((str(v.dtype), v.shape) for v in w.values()) == sorted(
        [("int8", (48, 64)), ("uint8", (32, 24)), ("int8", (24, 32)), ("int8", (16, 36))])
    assert all(k.endswith(("_scale", "_bias")) for k, v in stored.items() if v.dtype.kind == "f"), list(stored)
    # main calls the wo_gemm kernels; the activation QDQ is still there, as float ops with ONNX rounding
    # and the scale's exact bits, and the fp16 Cast pairs are computed without half
    text = imported.mod.script()
    assert text.count("R.call_tir(cls.banana_wo_gemm_") == 4
    assert "R.quantize" not in text and "R.dequantize" not in text and "float16" not in text
    assert all(f"R.call_tir(cls.{name}" in text for name in ("quantize_onnx", "dequantize_onnx", "round_to_fp16"))
    kernels = [f for _, f in imported.mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "banana.kernel" in f.attrs]
    assert {str(f.attrs["banana.kernel"]) for f in kernels} == {"wo_gemm_adreno"}


def test_fp16_variant_casts_at_the_layer_and_keeps_fp16_round_trips(tmp_path: Path) -> None:
    imported, lowering = _lower(tiny_qdq(tmp_path / "tiny.onnx"), variant="fp16")
    assert {r.kernel for r in lowering.layers} == {"wo_gemm_adreno.int8.fp16", "wo_gemm_adreno.int4.fp16"}
    text = imported.mod.script()
    assert "round_to_fp16" not in text  # the device has half: the Cast pairs stay as they are
    params = [f for _, f in imported.mod.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "banana.kernel" in f.attrs]
    assert params and all(re.search(r'A: T\.Buffer\(\([^)]*\), "float16"\)', f.script()) for f in params)


@pytest.mark.parametrize("kwargs,message", [({"variant": "fp8"}, "fp8"), ({"variant": "fp16", "backend": "cpu"},
                                                                           "only the adreno backend")])
def test_bad_variant_is_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    backend = kwargs.pop("backend", "adreno")
    with pytest.raises(BadConfigError, match=message):
        import_with_integer_regions(tiny_qdq(tmp_path / "tiny.onnx"), None, backend, **kwargs)


def test_variants_table() -> None:
    assert WO_VARIANTS["fp32"].runs_on_pocl and not WO_VARIANTS["fp16"].runs_on_pocl
    assert (WO_VARIANTS["fp16"].accumulate, WO_VARIANTS["fp16-acc32"].accumulate) == ("float16", "float32")


# -- PoCL -------------------------------------------------------------------------------------------------

def test_round_to_fp16_is_exact_on_pocl() -> None:
    """The half-free fp16 rounding against numpy's float16 cast on every kind of float32."""
    from tvm import relax

    from banana.targets.opencl import extract_launch_plan, lower_for_opencl, run_on_pocl

    n = 1 << 16
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([n], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(round_to_fp16_te, x))
        bb.emit_func_output(y)
    target = adreno_target()
    plan = extract_launch_plan(lower_for_opencl(bb.get(), target), target)
    rng = np.random.default_rng(0)
    special = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65519, 65520, 6e-8, 3e-8, -2.9802322e-08, 2**-14,
                        2**-14 * (1 - 2**-12), 2**-25, 3 * 2**-26, np.nan, np.inf, -np.inf, 1e-45, -0.0], np.float32)
    tiny = rng.standard_normal(n // 2).astype(np.float32) * np.exp2(rng.integers(-30, -10, n // 2)).astype(np.float32)
    bits = rng.integers(0, 2**32, n // 2 - special.size, dtype=np.uint64).astype(np.uint32).view(np.float32)
    xs = np.concatenate([special, tiny, bits]).astype(np.float32)
    (got,) = run_on_pocl(plan, [xs], [])
    with np.errstate(over="ignore"):
        want = xs.astype(np.float16).astype(np.float32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (xs[~same][:5], got[~same][:5], want[~same][:5])


@pytest.mark.parametrize("fp16_casts,rtol", [(False, 1e-5), (True, 1e-5)], ids=["fp32-act", "fp16-act"])
def test_tiny_qdq_on_pocl_matches_onnxruntime(tmp_path: Path, fp16_casts: bool, rtol: float) -> None:
    """compile --backend adreno --soc SM8650 + verify on PoCL against onnxruntime on the same QDQ file
    (one layer chain this short: fp16 rounding flips are not expected at 1e-5 -- they would show)."""
    from banana.compiler.pipeline import compile_model

    path = tiny_qdq(tmp_path / "tiny.onnx", fp16_casts=fp16_casts)
    result = compile_model(path, backend="adreno", soc="SM8650", out=tmp_path / "art", verify=True, rtol=rtol)
    assert result.verify.executed and result.verify.ok, result.verify.comparisons
    manifest = result.manifest
    assert {r["kernel"] for r in manifest["integer"]["layers"]} == {"wo_gemm_adreno.int8.fp32",
                                                                    "wo_gemm_adreno.int4.fp32"}
    assert manifest["build"]["wo_gemm_adreno"] == {**WO_VARIANTS["fp32"].to_json(), "kernels": 4}
    assert manifest["precision"] == "int4+int8" and not manifest["integer"]["float_fallbacks"]
    source = (tmp_path / "art" / "kernels.cl").read_text()
    assert "half" not in source and "cl_khr_fp16" not in source


def test_w8a8_graph_with_requantized_outputs_on_pocl(tmp_path: Path) -> None:
    """The host integer tests' W8A8 graph (QDQ Conv, int4 block-8 MatMul, Gemm ending in a
    QuantizeLinear, per-tensor MatMul): on adreno every layer runs weight-only, the activation QDQ
    and the output QuantizeLinear stay float fake-quant, and the result is onnxruntime's to 1e-5."""
    from banana.compiler.pipeline import compile_model
    from tests.compiler.passes.test_integer import banana_form_model

    path = banana_form_model(tmp_path / "m.onnx")
    result = compile_model(path, backend="adreno", soc="SM8650", out=tmp_path / "art", verify=True, rtol=1e-5)
    assert result.verify.executed and result.verify.ok, result.verify.comparisons
    layers = result.manifest["integer"]["layers"]
    assert [(r["name"], r["kernel"]) for r in layers] == [
        ("conv", "wo_gemm_adreno.int8.fp32"), ("matmul_int4", "wo_gemm_adreno.int4.fp32"),
        ("gemm", "wo_gemm_adreno.int8.fp32"), ("matmul_tail", "wo_gemm_adreno.int8.fp32")]
    assert all("fake-quant" in r["reason"] for r in layers)


def test_quantization_is_not_dropped(tmp_path: Path) -> None:
    """The test can fail: a build that ignored the weight codes (float weights = 0) or skipped the
    activation QDQ would be far outside the bound above."""
    path = tiny_qdq(tmp_path / "tiny.onnx", fp16_casts=False)
    model = onnx.load(str(path))
    for node in model.graph.node:  # drop the activation QDQ: MatMul reads x directly
        if node.name == "l1_w8a8":
            node.input[0] = "x"
    onnx.save_model(model, str(tmp_path / "noqdq.onnx"))
    specs = [types.SimpleNamespace(name="x", shape=(1, 8, 64), dtype="float32"),
             types.SimpleNamespace(name="img", shape=(1, 4, 8, 8), dtype="float32")]
    inputs = random_inputs(specs, 0)
    with_qdq = onnxruntime_outputs(path, specs, inputs)[0]
    without = onnxruntime_outputs(tmp_path / "noqdq.onnx", specs, inputs)[0]
    assert np.abs(with_qdq - without).max() / np.abs(with_qdq).max() > 1e-3


def test_fp16_variant_builds_valid_opencl_c_and_pocl_run_is_refused(tmp_path: Path) -> None:
    from banana.targets.backends import get_backend
    from banana.targets.soc import load_soc

    imported, _ = _lower(tiny_qdq(tmp_path / "tiny.onnx"), variant="fp16")
    backend = get_backend("adreno")
    out = tmp_path / "art"
    out.mkdir()
    build = backend.build(imported, load_soc("SM8650"), out)
    assert build.facts["wo_gemm_adreno"]["variant"] == "fp16" and not build.facts["wo_gemm_adreno"]["runs_on_pocl"]
    source = (out / "kernels.cl").read_text()
    assert "half" in source
    if shutil.which("clang-15"):
        cmd = ["clang-15", "-x", "cl", "-cl-std=CL1.2", "-Xclang", "-finclude-default-header", "--target=spir64",
               "-Xclang", "-cl-ext=+cl_khr_fp16", "-fsyntax-only", "-Werror=implicit-function-declaration",
               str(out / "kernels.cl")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    artifact = types.SimpleNamespace(manifest={"build": build.facts}, directory=out)
    with pytest.raises(ToolchainError, match="cl_khr_fp16"):
        backend.run(artifact, [])


# -- slow: the nano DiT -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nano_qdq(tmp_path_factory) -> dict[str, Path]:
    """The nano DiT's adreno plan (int8 edges, int4 elsewhere -- block 32 on the MLPs --, fp16
    activations) and its W8A8 plan, through banana's calibration and QDQ export."""
    import torch

    from banana.compiler.quantize.calibrate import calibrate
    from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
    from banana.compiler.quantize.qdq import export_qdq
    from banana.compiler.quantize.ranges import activation_ranges
    from banana.compiler.zoo import build_reference

    torch.set_num_threads(1)
    nano = build_reference("nano-dit")
    root = tmp_path_factory.mktemp("nano-qdq")
    cal = calibrate(nano, steps=4, seeds=range(1000, 1002))
    ranges = activation_ranges(cal, "mse")
    layers = quantizable_layers(nano)
    keep8 = ("patch_embed", "t_embed", "text_pool", "final_proj")
    plan = {n: LayerPrecision("int8", "fp16", 0) if n.startswith(keep8)
            else LayerPrecision("int4", "fp16", 32 if ".mlp." in n else 0) for n in layers}
    paths = {"wo": export_qdq(QuantDenoiser(nano, plan, ranges, cal.timesteps), root / "wo.onnx", step=1)}
    w8 = {n: LayerPrecision("int8", "int8", 0) for n in layers}
    paths["w8a8"] = export_qdq(QuantDenoiser(nano, w8, ranges, cal.timesteps), root / "w8a8.onnx", step=1,
                               float_onnx=root / "wo.float.onnx", int4_as_int8=True)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("plan,rtol", [("wo", 1e-3), ("w8a8", None)])
def test_nano_dit_on_pocl_matches_onnxruntime(nano_qdq, tmp_path: Path, plan: str, rtol: float | None) -> None:
    from banana.compiler.pipeline import compile_model

    result = compile_model(nano_qdq[plan], backend="adreno", soc="SM8650", out=tmp_path / "art", verify=True,
                           rtol=rtol)
    report = result.verify
    assert report.executed and report.ok, report.comparisons
    layers = result.manifest["integer"]["layers"]
    assert len(layers) == 50 and all(r["kernel"].startswith("wo_gemm_adreno.") for r in layers)
    assert all(r["kernel"].endswith(".fp32") and r["epilogue"] == "weight-only" for r in layers)
    if plan == "wo":
        assert {r["weight"] for r in layers} == {"int4", "int8"}
        assert not any("reason" in r for r in layers)
    else:
        assert report.rtol < 1e-2  # verify's one 8-bit step of the output range, not the loose QDQ default
        assert all("fake-quant" in r["reason"] for r in layers)


def test_cli_kernel_variant_is_built_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from banana.compiler.cli import main

    model = tiny_qdq(tmp_path / "tiny.onnx")
    out = tmp_path / "art"
    assert main(["compile", str(model), "--backend", "adreno", "--soc", "SM8650", "--kernel-variant", "fp16-acc32",
                 "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build"]["wo_gemm_adreno"]["variant"] == "fp16-acc32"
    assert {r["kernel"] for r in manifest["integer"]["layers"]} == {"wo_gemm_adreno.int8.fp16-acc32",
                                                                    "wo_gemm_adreno.int4.fp16-acc32"}
    capsys.readouterr()
    for argv, needle in ((["--backend", "adreno", "--soc", "SM8650", "--kernel-variant", "fp8"], "fp8"),
                         (["--backend", "host", "--kernel-variant", "fp16"], "only the adreno backend")):
        bad = tmp_path / f"bad-{argv[1]}"
        assert main(["compile", str(model), *argv, "-o", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("banana: error:") and needle in err[0], err
        assert not bad.exists()
