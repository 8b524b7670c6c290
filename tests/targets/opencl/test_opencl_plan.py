"""Launch plan structure, artifact files, schema validation, target dict and arm64 library export."""

from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest
import tvm
import tvm.relax.frontend.onnx  # noqa: F401  (registers relax.frontend.onnx)
from tvm import relax

from banana.compiler.errors import ArtifactError, BadConfigError, ToolchainError, UnsupportedOpError
from banana.targets.opencl import (
    PLAN_FORMAT_VERSION,
    LaunchPlan,
    adreno_target,
    build_adreno_library,
    extract_launch_plan,
    lower_for_opencl,
    run_on_pocl,
)


@pytest.fixture(scope="module")
def attention(onnx_models):
    model = onnx_models["gqa_attention"](np.random.default_rng(7))
    mod = relax.frontend.onnx.from_onnx(model, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    target = adreno_target()
    lowered = lower_for_opencl(mod, target)
    return model, mod, lowered, extract_launch_plan(lowered, target), [p.numpy() for p in params["main"]]


def test_adreno_target_is_an_opencl_target_with_arm64_host():
    t = adreno_target(host_mattr=["+neon"], max_threads_per_block=128)
    tgt = tvm.target.Target(t)
    assert tgt.kind.name == "opencl" and "adreno" in tgt.keys
    assert tgt.host.kind.name == "llvm" and str(tgt.host.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert int(tgt.attrs["max_threads_per_block"]) == 128
    assert json.loads(json.dumps(t)) == t


def test_adreno_target_rejects_unknown_options():
    with pytest.raises(BadConfigError, match="warp_sise"):
        adreno_target(warp_sise=64)


def test_every_kernel_is_in_kernels_cl_and_launches_fit_the_target(attention):
    _, _, _, plan, _ = attention
    declared = set(re.findall(r"__kernel void (\w+)\(", plan.source))
    assert {k.name for k in plan.kernels} == declared
    assert {s.kernel for s in plan.steps} <= declared
    for step in plan.steps:
        assert int(np.prod(step.local_work_size)) <= 256  # Adreno preset max_threads_per_block
        assert all(g % loc == 0 for g, loc in zip(step.global_work_size, step.local_work_size, strict=True))
    assert plan.to_json()["format_version"] == PLAN_FORMAT_VERSION
    assert [b.name for b in plan.buffers_of_kind("input")] == ["x"]
    assert [b.name for b in plan.buffers_of_kind("param")] == ["wq", "wk", "wv", "wo"]


def test_plan_round_trips_through_save_and_load(attention, tmp_path):
    model, _, _, plan, params = attention
    plan.save(tmp_path / "artifact")
    assert sorted(p.name for p in (tmp_path / "artifact").iterdir()) == ["kernels.cl", "launch_plan.json"]
    loaded = LaunchPlan.load(tmp_path / "artifact")
    assert loaded.to_json() == plan.to_json()
    assert loaded.source == plan.source
    x = np.random.default_rng(1).standard_normal((1, 16, 64)).astype(np.float32)
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_on_pocl(loaded, [x], params)[0], ref, rtol=1e-4, atol=1e-5)


def _corrupt(tmp_path, plan, edit):
    d = tmp_path / "bad"
    plan.save(d)
    doc = json.loads((d / "launch_plan.json").read_text())
    edit(doc)
    (d / "launch_plan.json").write_text(json.dumps(doc))
    return d


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["steps"][0].pop("global_work_size"), "'global_work_size' is a required property"),
        (lambda d: d.__setitem__("format_version", 99), "format_version"),
        (lambda d: d["buffers"][0].__setitem__("kind", "texture"), "buffers/0/kind"),
        (lambda d: d["steps"][0]["local_work_size"].__setitem__(0, 0), "steps/0/local_work_size/0"),
    ],
)
def test_corrupted_plan_fails_schema_validation(attention, tmp_path, edit, message):
    d = _corrupt(tmp_path, attention[3], edit)
    with pytest.raises(ArtifactError, match="schema violation") as err:
        LaunchPlan.load(d)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_plan_cross_references_are_checked(attention, tmp_path):
    d = _corrupt(tmp_path, attention[3], lambda doc: doc["steps"][0].__setitem__("kernel", "no_such_kernel"))
    with pytest.raises(ArtifactError, match="unknown kernel 'no_such_kernel'"):
        LaunchPlan.load(d)


def test_tampered_kernels_cl_is_detected(attention, tmp_path):
    d = tmp_path / "tampered"
    attention[3].save(d)
    (d / "kernels.cl").write_text((d / "kernels.cl").read_text() + "\n// edited\n")
    with pytest.raises(ArtifactError, match="kernels_sha256"):
        LaunchPlan.load(d)


def test_not_json_and_missing_files_are_artifact_errors(tmp_path, attention):
    with pytest.raises(ArtifactError, match="missing"):
        LaunchPlan.load(tmp_path / "nothing")
    d = tmp_path / "garbled"
    attention[3].save(d)
    (d / "launch_plan.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        LaunchPlan.load(d)


def test_unscheduled_primfunc_is_named(attention):
    _, mod, _, _, _ = attention
    with tvm.target.Target(adreno_target()):
        legalized = relax.transform.LegalizeOps()(mod)
    with pytest.raises(UnsupportedOpError, match="is not scheduled"):
        extract_launch_plan(legalized, adreno_target())


def test_non_opencl_target_is_rejected(attention):
    with pytest.raises(BadConfigError, match="opencl"):
        lower_for_opencl(attention[1], {"kind": "llvm"})


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs g++-aarch64-linux-gnu")
def test_arm64_library_embeds_the_opencl_kernels(attention, tmp_path):
    _, _, lowered, plan, _ = attention
    lib = build_adreno_library(lowered, adreno_target(), tmp_path / "out" / "model.so")
    data = lib.read_bytes()
    assert data[:4] == b"\x7fELF"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    assert e_machine == 183  # EM_AARCH64
    for kernel in plan.kernels:
        assert f"__kernel void {kernel.name}(".encode() in data
    assert list((tmp_path / "out").iterdir()) == [lib]  # no temp files left beside it


def test_missing_cross_compiler_is_a_toolchain_error(attention, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="aarch64-linux-gnu-g\\+\\+"):
        build_adreno_library(attention[2], adreno_target(), tmp_path / "model.so")
