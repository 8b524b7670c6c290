"""arm64 execution path: cross-export, run under qemu-aarch64, compare with onnxruntime."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from banana.compiler.errors import ArtifactError, BadConfigError, VerificationError
from banana.targets.arm64 import (
    Arm64Runtime,
    default_cache_dir,
    ensure_runtime,
    export_arm64_library,
    is_aarch64_elf,
    qemu_cpu_for_features,
    run_arm64,
)
from banana.targets.arm64 import runtime as runtime_mod

SNAPDRAGON_MATTR = ["+neon", "+dotprod", "+i8mm", "+fullfp16"]
TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": SNAPDRAGON_MATTR, "num-cores": 4}


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


@pytest.fixture(scope="session")
def rt() -> Arm64Runtime:
    return ensure_runtime()


# ---------------------------------------------------------------- qemu CPU model choice


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ([], "cortex-a72"),
        (["neon"], "cortex-a72"),
        (["dotprod", "fp16"], "neoverse-n1"),
        (["+neon", "+dotprod", "+fullfp16"], "neoverse-n1"),
        (SNAPDRAGON_MATTR, "max,sve=off,sme=off"),
        (["dotprod", "i8mm", "fp16", "bf16"], "max,sve=off,sme=off"),
        (["i8mm", "-sve"], "max,sve=off,sme=off"),
        (["dotprod", "sve"], "max"),
    ],
)
def test_qemu_cpu_for_features(features: list[str], expected: str) -> None:
    assert qemu_cpu_for_features(features) == expected


def test_qemu_cpu_for_unknown_feature_names_it() -> None:
    with pytest.raises(BadConfigError, match="avx512"):
        qemu_cpu_for_features(["dotprod", "+avx512"])


_PROBE_C = r"""
#include <arm_neon.h>
#include <stdio.h>
#include <sys/auxv.h>
#include <asm/hwcap.h>
int main(void) {
  unsigned long h = getauxval(AT_HWCAP), h2 = getauxval(AT_HWCAP2);
  printf("dotprod=%d fp16=%d sve=%d i8mm=%d bf16=%d\n", !!(h & HWCAP_ASIMDDP),
         !!(h & HWCAP_ASIMDHP), !!(h & HWCAP_SVE), !!(h2 & HWCAP2_I8MM), !!(h2 & HWCAP2_BF16));
  fflush(stdout);
  int8_t a[16], b[16];
  for (int i = 0; i < 16; i++) { a[i] = (int8_t)(i - 7); b[i] = (int8_t)(3 * i - 20); }
  int32x4_t acc = vmmlaq_s32(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));  /* smmla */
  int32_t out[4];
  vst1q_s32(out, acc);
  printf("%d %d %d %d\n", out[0], out[1], out[2], out[3]);
  return 0;
}
"""


@pytest.fixture(scope="module")
def smmla_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("smmla")
    (d / "probe.c").write_text(_PROBE_C)
    exe = d / "probe"
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-O1", "-march=armv8.6-a+i8mm", str(d / "probe.c"), "-o", str(exe)],
        check=True,
    )
    disasm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(exe)], capture_output=True, text=True)
    assert "smmla" in disasm.stdout
    return exe


def _run_probe(rt: Arm64Runtime, exe: Path, cpu: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*rt.qemu_command(cpu), str(exe)], capture_output=True, text=True, timeout=60)


def test_smmla_runs_under_cpu_chosen_for_snapdragon(rt: Arm64Runtime, smmla_probe: Path) -> None:
    cpu = qemu_cpu_for_features(["dotprod", "i8mm", "fp16", "bf16"])
    proc = _run_probe(rt, smmla_probe, cpu)
    assert proc.returncode == 0, proc.stderr
    caps, values = proc.stdout.strip().splitlines()
    # The SoC's features are there and SVE (absent on Snapdragons) is not.
    assert caps == "dotprod=1 fp16=1 sve=0 i8mm=1 bf16=1"
    a = (np.arange(16) - 7).reshape(2, 8)
    b = (3 * np.arange(16) - 20).reshape(2, 8)
    assert [int(v) for v in values.split()] == (a @ b.T).reshape(-1).tolist()


def test_smmla_traps_on_a_cpu_without_i8mm(rt: Arm64Runtime, smmla_probe: Path) -> None:
    proc = _run_probe(rt, smmla_probe, qemu_cpu_for_features(["dotprod", "fp16"]))
    assert proc.returncode != 0
    assert "i8mm=0" in proc.stdout


# ---------------------------------------------------------------- runtime setup


def test_ensure_runtime_is_idempotent(rt: Arm64Runtime) -> None:
    t0 = time.perf_counter()
    again = ensure_runtime()
    assert time.perf_counter() - t0 < 1.0
    assert again == rt
    assert _elf_machine(rt.runner) == 183  # EM_AARCH64
    assert _elf_machine(rt.lib_dir / "libtvm_runtime.so") == 183
    assert (rt.include_dir / "tvm" / "ffi" / "function.h").is_file()


def test_unfinished_runtime_dir_is_rebuilt(rt: Arm64Runtime, tmp_path: Path) -> None:
    """A dir without the stamp (killed build) must be replaced, reusing downloaded wheels."""
    wheels = tmp_path / "arm64" / "wheels"
    wheels.mkdir(parents=True)
    for whl in (rt.root.parent / "wheels").glob("*.whl"):
        (wheels / whl.name).symlink_to(whl)
    half = tmp_path / "arm64" / rt.root.name
    (half / "lib").mkdir(parents=True)
    (half / "banana-run").write_bytes(b"truncated")
    built = ensure_runtime(tmp_path)
    assert built.root == half
    assert _elf_machine(built.runner) == 183
    assert not [p for p in (tmp_path / "arm64").iterdir() if p.name.startswith(".build-")]


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BANANA_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("BANANA_CACHE")
    # tests run from a checkout, so the cache is <repo>/.cache
    assert default_cache_dir() == Path(__file__).resolve().parents[2] / ".cache"


def test_runner_rejects_bad_usage(rt: Arm64Runtime) -> None:
    proc = subprocess.run(
        [*rt.qemu_command("cortex-a72"), str(rt.runner), "only-one-arg"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "usage" in proc.stderr
    ok = subprocess.run(
        [*rt.qemu_command("cortex-a72"), str(rt.runner), "--self-test"], capture_output=True, text=True
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok"), ok.stderr


def test_module_main_ensure_prints_runner(rt: Arm64Runtime) -> None:
    env = {**os.environ, "BANANA_CACHE": str(rt.root.parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "banana.targets.arm64", "--ensure"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(rt.runner)


# ---------------------------------------------------------------- compile, export, run


def _onnx_model(rng: np.random.Generator) -> onnx.ModelProto:
    """MatMul+Add+LayerNorm+Gelu+Softmax on one input, Conv on another: two outputs (a tuple)."""
    inits = {
        "W": rng.standard_normal((16, 32)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(32).astype(np.float32),
        "g": rng.standard_normal(32).astype(np.float32),
        "beta": rng.standard_normal(32).astype(np.float32),
        "cw": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "cb": rng.standard_normal(4).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("LayerNormalization", ["a", "g", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("Gelu", ["ln"], ["ge"]),
        helper.make_node("Softmax", ["ge"], ["y"], axis=-1),
        helper.make_node("Conv", ["img", "cw", "cb"], ["z"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "arm64_test",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 16]),
            helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 32]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(0)
    model = _onnx_model(rng)
    inputs = [
        rng.standard_normal((2, 8, 16)).astype(np.float32),
        rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
    ]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": inputs[0], "img": inputs[1]})

    mod = from_onnx(model, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    target = tvm.target.Target(TARGET)
    with target:
        mod = relax.get_default_pipeline(target)(mod)
    ex = tvm.compile(mod, target)

    d = tmp_path_factory.mktemp("artifact")
    lib = export_arm64_library(ex, d / "model.so")
    params_path = d / "weights.params"
    tvm.runtime.save_param_dict_to_file({f"p{i}": p for i, p in enumerate(params["main"])}, str(params_path))
    return {"lib": lib, "params": params_path, "inputs": inputs, "ref": ref}


def test_exported_library_is_aarch64_elf(artifact: dict) -> None:
    assert _elf_machine(artifact["lib"]) == 183
    assert is_aarch64_elf(artifact["lib"])
    assert not is_aarch64_elf(Path(sys.executable).resolve())


def test_run_under_qemu_matches_onnxruntime(rt: Arm64Runtime, artifact: dict) -> None:
    cpu = qemu_cpu_for_features(SNAPDRAGON_MATTR)
    res = run_arm64(artifact["lib"], artifact["params"], artifact["inputs"], qemu_cpu=cpu, repeat=2)
    assert len(res.outputs) == len(artifact["ref"]) == 2
    for got, want in zip(res.outputs, artifact["ref"], strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert len(res.emulated_run_ms) == 2 and all(t > 0 for t in res.emulated_run_ms)
    assert res.emulated_load_ms > 0 and res.wall_s > 0


def test_run_with_wrong_inputs_raises_verification_error(rt: Arm64Runtime, artifact: dict) -> None:
    cpu = qemu_cpu_for_features(SNAPDRAGON_MATTR)
    with pytest.raises(VerificationError, match="expects 8 arguments"):
        run_arm64(artifact["lib"], artifact["params"], artifact["inputs"][:1], qemu_cpu=cpu)
    wrong_dtype = [artifact["inputs"][0], artifact["inputs"][1].astype(np.float64)]
    with pytest.raises(VerificationError, match="float64"):
        run_arm64(artifact["lib"], artifact["params"], wrong_dtype, qemu_cpu=cpu)


def test_stamp_file_marks_finished_runtime(rt: Arm64Runtime) -> None:
    assert (rt.root / runtime_mod.STAMP).is_file()
    assert runtime_mod._load(rt.root.parent / "does-not-exist") is None


def test_run_rejects_host_library_and_bad_cpu(rt: Arm64Runtime, artifact: dict) -> None:
    with pytest.raises(ArtifactError, match="not an AArch64 ELF"):
        run_arm64(Path(sys.executable).resolve(), artifact["params"], artifact["inputs"], qemu_cpu="max")
    with pytest.raises(BadConfigError, match="no-such-cpu"):
        run_arm64(artifact["lib"], artifact["params"], artifact["inputs"], qemu_cpu="no-such-cpu")
