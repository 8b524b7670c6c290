"""`banana compile --backend hexagon` on QDQ models: every quantized layer an HVX integer kernel.

What is checked per model: the manifest's ``integer`` section lists each quantized layer with the
``int_gemm_hexagon`` kernel and no float fallback; the whole-model assembly (``kernels.s``) multiplies
through ``vrmpy`` (8-bit activations) and ``vdmpy`` (16-bit activations); and the integer GEMM
PrimFuncs that very build compiled (captured from the module handed to ``build_hexagon``) run under
qemu-hexagon bit-exact against a numpy int32 GEMM. The whole model cannot run here (qemu-hexagon has
no float HVX), so the kernels are run one by one.

Models: the hand-built int8/int4 chain of ``tests/compiler/passes/test_integer.py`` and a two-layer
uint16-activation MLP (fast enough for one compile each), and the nano DiT's W8A8, mixed INT4/INT8 and
INT16-activation plans (the fixtures of ``test_pipeline_integer.py`` / ``test_pipeline_int16.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.pipeline import compile_model
from banana.targets.hexagon.qemu import qemu_available, run_primfunc
from tests.compiler.passes.test_integer import banana_form_model
from tests.compiler.test_pipeline_int16 import int16_models  # noqa: F401  (module fixture)
from tests.compiler.test_pipeline_integer import nano, qdq_models  # noqa: F401  (module fixtures)

SOC = "SM8650"
pytestmark = pytest.mark.slow  # every test compiles a whole model for Hexagon (LLVM's Hexagon backend)
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="qemu-hexagon, clang-15 or ld.lld missing")


def a16_mlp_model(path: Path, m: int = 8, k: int = 32, n: int = 24) -> Path:
    """x -> Q/DQ(uint16, zp 32768) -> MatMul(int8 per channel) -> Q/DQ(uint16) -> MatMul(int8) -> y [m, 12]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(8 / 65535, np.float32), "sx"),
        numpy_helper.from_array(np.array(32768, np.uint16), "zx"),
        numpy_helper.from_array(np.array(0.002, np.float32), "sh"),
        numpy_helper.from_array(np.array(32768, np.uint16), "zh"),
        numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w1"),
        numpy_helper.from_array((rng.random(n) * 0.01 + 0.005).astype(np.float32), "s1"),
        numpy_helper.from_array(rng.integers(-127, 128, (n, 12)).astype(np.int8), "w2"),
        numpy_helper.from_array(np.array(0.01, np.float32), "s2"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1", "s1"], ["w1d"], axis=1),
        helper.make_node("MatMul", ["xd", "w1d"], ["h"], name="mm1"),
        helper.make_node("QuantizeLinear", ["h", "sh", "zh"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "sh", "zh"], ["hd"]),
        helper.make_node("DequantizeLinear", ["w2", "s2"], ["w2d"]),
        helper.make_node("MatMul", ["hd", "w2d"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(nodes, "a16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _compile_hexagon(path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str, tvm.IRModule]:
    """Compile for Hexagon; return (manifest, whole-model assembly, the Relax module build_hexagon got)."""
    import banana.targets.hexagon as hexagon

    built: list[tvm.IRModule] = []
    original = hexagon.build_hexagon

    def spy(mod: tvm.IRModule, target: dict[str, Any], out_dir: Path) -> Any:
        built.append(mod)
        return original(mod, target, out_dir)

    monkeypatch.setattr(hexagon, "build_hexagon", spy)  # the backend imports it at call time
    result = compile_model(path, backend="hexagon", soc=SOC, out=out)
    assert len(built) == 1
    return result.manifest, (out / result.manifest["build"]["assembly"]).read_text(), built[0]


def _mnemonic_count(asm: str, mnemonic: str) -> int:
    return len(re.findall(rf"=\s*{mnemonic}\(", asm))


def _check_layers(manifest: dict, n_layers: int | None = None) -> list[dict]:
    integer = manifest["integer"]
    layers = integer["layers"]
    assert layers and not integer["float_fallbacks"]
    assert all(r["kernel"].startswith("int_gemm_hexagon") for r in layers), {r["kernel"] for r in layers}
    if n_layers is not None:
        assert len(layers) == n_layers
    return layers


def _unpack_int4(w: np.ndarray, k: int) -> np.ndarray:
    """Two signed nibbles per byte, low nibble first (ONNX INT4 packing), in numpy."""
    nib = np.stack([w & 0x0F, w >> 4], axis=-1).reshape(w.shape[0], -1)[:, :k].astype(np.int16)
    return np.where(nib >= 8, nib - 16, nib).astype(np.int8)


def _run_int_gemm_under_qemu(func: tvm.tirx.PrimFunc, target: dict[str, Any], tmp_path: Path,
                             seed: int = 0) -> tuple[str, bool]:
    """Run one captured integer GEMM PrimFunc (params A, W, C) for the build's ``target`` under qemu-hexagon;
    return (its shape, whether it equals a numpy int32 GEMM bit for bit)."""
    a_buf, w_buf, c_buf = func.params  # buffer parameters: each carries its dtype and shape
    m, k = (int(d) for d in a_buf.shape)
    c_shape = tuple(int(d) for d in c_buf.shape)
    n = c_shape[1]
    groups = c_shape[2] if len(c_shape) == 3 else 1
    rng = np.random.default_rng(seed)
    a_dtype = str(a_buf.dtype)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max, size=(m, k), endpoint=True).astype(a_dtype)
    w_shape = tuple(int(d) for d in w_buf.shape)
    if str(w_buf.dtype) == "uint8":  # int4 weights, packed
        w_arg = rng.integers(0, 256, size=w_shape).astype(np.uint8)
        w = _unpack_int4(w_arg, k)
    else:
        w_arg = rng.integers(-128, 128, size=w_shape).astype(np.int8)
        w = w_arg
    want = np.einsum("mgk,ngk->mng", a.astype(np.int64).reshape(m, groups, -1),
                     w.astype(np.int64).reshape(n, groups, -1)).astype(np.int32)
    want = want.reshape(c_shape)
    c0 = np.full(c_shape, 0x5A5A5A5A, np.int32)  # garbage: the kernel must overwrite every element
    (got,) = run_primfunc(func, [a, w_arg, c0], [2], tvm.target.Target(target), work_dir=tmp_path)
    return f"{m}x{n}x{k} {a_dtype} {w_buf.dtype} g{groups}", bool(np.array_equal(got, want))


def _int_gemms(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith("banana_int_gemm_")}


# ---------------------------------------------------------------- small hand-built models


def test_int8_int4_chain_compiles_to_vrmpy_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conv(int8) -> MatMul(int4, block 8) -> Gemm(int8, requant) -> MatMul(int8): uint8 activations."""
    manifest, asm, mod = _compile_hexagon(banana_form_model(tmp_path / "m.onnx"), tmp_path / "art", monkeypatch)
    layers = _check_layers(manifest, 4)
    assert {r["weight"] for r in layers} == {"int8", "int4"}
    assert _mnemonic_count(asm, "vrmpy") >= len(_int_gemms(mod))
    assert len(_int_gemms(mod)) == 4


def test_uint16_activations_compile_to_vdmpy_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, asm, mod = _compile_hexagon(a16_mlp_model(tmp_path / "a16.onnx"), tmp_path / "art", monkeypatch)
    layers = _check_layers(manifest, 2)
    assert {r["act"] for r in layers} == {"uint16"}
    assert _mnemonic_count(asm, "vdmpy") >= 2
    assert _mnemonic_count(asm, "vrmpy") == 0


@needs_qemu
def test_small_model_kernels_run_bit_exact_under_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, _, mod = _compile_hexagon(banana_form_model(tmp_path / "m.onnx"), tmp_path / "art", monkeypatch)
    results = [_run_int_gemm_under_qemu(f, manifest["target"], tmp_path / name)
               for name, f in sorted(_int_gemms(mod).items())]
    assert results and all(ok for _, ok in results), results


# ---------------------------------------------------------------- nano DiT plans


@pytest.mark.parametrize("plan", ["w8a8", "mixed"])
def test_nano_qdq_hexagon_int_kernels_and_qemu(qdq_models, plan: str, tmp_path: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, asm, mod = _compile_hexagon(qdq_models[plan], tmp_path / "art", monkeypatch)
    layers = _check_layers(manifest, 50)
    if plan == "mixed":
        assert {r["weight"] for r in layers} == {"int4", "int8"}
    gemms = _int_gemms(mod)
    assert gemms and _mnemonic_count(asm, "vrmpy") >= len(gemms)
    if qemu_available():  # a few distinct kernels of this very build, incl. an int4 one for "mixed"
        chosen = sorted(gemms.items(), key=lambda kv: str(kv[1].params[1].dtype))[-2:]
        results = [_run_int_gemm_under_qemu(f, manifest["target"], tmp_path / name) for name, f in chosen]
        assert all(ok for _, ok in results), results


def test_nano_a16_hexagon_uses_vdmpy(int16_models, tmp_path: Path,  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, asm, mod = _compile_hexagon(int16_models["a16"], tmp_path / "art", monkeypatch)
    layers = _check_layers(manifest, 50)
    assert {r["act"] for r in layers} == {"uint8", "uint16"}
    assert _mnemonic_count(asm, "vdmpy") > 0 and _mnemonic_count(asm, "vrmpy") > 0
    if qemu_available():
        # uint16 layers reach the GEMM re-biased to int16 (banana.compiler.passes.integer): 16-bit A either way
        wide = [f for f in _int_gemms(mod).values() if str(f.params[0].dtype) in ("int16", "uint16")]
        assert wide, "no 16-bit integer GEMM in the build"
        name, ok = _run_int_gemm_under_qemu(wide[0], manifest["target"], tmp_path / "wide")
        assert ok, name
