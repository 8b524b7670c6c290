"""banana tune searches the fp32 GEMM kernel's schedule knobs; banana compile --tuning-db builds with them."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm.target import codegen

from banana.compiler.cli import main
from banana.compiler.passes.small_kernels import serialize_small_kernels
from banana.kernels.f32_gemm import f32_gemm_primfunc, outer_tile_fits
from banana.tuning import gemm_knobs as gemm_mod
from banana.tuning.gemm_knobs import (
    MAX_GEMM_CANDIDATES,
    GemmKnobs,
    GemmSpec,
    default_gemm_knobs,
    gemm_candidates,
    gemm_module,
)
from tests.tuning.knob_tuning import tune_rejects_one_and_resumes

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
SPEC = GemmSpec(16, 32, 32, transpose_b=False, bias=True)  # the GEMM of the model below


def _mlp(path: Path) -> Path:
    """x[2, 8, 32] -> MatMul w[32, 32] -> Add b: one 16x32x32 GEMM with a bias epilogue and no MetaSchedule
    task worth tuning, so ``--trials 4`` all go to the GEMM's knobs."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "gemm_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="banana-tests")
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("target", [AVX2, ARM])
@pytest.mark.parametrize("spec", [GemmSpec(256, 384, 1536, False, True), GemmSpec(256, 16, 384, True, False), SPEC])
def test_candidates_are_bounded_register_limited_and_start_with_the_default(target: dict, spec: GemmSpec) -> None:
    listed = gemm_candidates(spec, target, 100)
    arm = "mtriple" in target
    assert listed[0] == default_gemm_knobs(spec, target)
    assert 4 <= len(listed) <= MAX_GEMM_CANDIDATES and len(set(listed)) == len(listed)
    assert all(outer_tile_fits(k.rows, k.vecs, arm) for k in listed)  # 16 ymm on x86, 32 q on arm64
    assert all(1 <= k.k_block <= spec.k and k.rows <= spec.m for k in listed)
    assert gemm_candidates(spec, target, 3) == listed[:3]  # a prefix: the same plan on a rerun


def test_explicit_default_knobs_build_the_default_kernel() -> None:
    """Applying stored default knobs must not change the kernel (a build without tuning is the reference)."""
    for spec in (SPEC, GemmSpec(256, 384, 1536, False, True), GemmSpec(64, 40, 48, True, False)):
        plain = f32_gemm_primfunc(spec.m, spec.n, spec.k, target=HOST, transpose_b=spec.transpose_b, bias=spec.bias)
        plain = serialize_small_kernels()(tvm.IRModule({"main": plain}))["main"]  # as the LLVM pipeline ships it
        explicit = gemm_module(spec, HOST, default_gemm_knobs(spec, HOST))["main"].without_attr("global_symbol")
        tvm.ir.assert_structural_equal(plain, explicit)


def test_knob_candidates_are_timed_as_the_build_ships_them() -> None:
    """A small GEMM is serial in the built model, so its knob candidates are timed serial too; a large one
    keeps its parallel loop (timing a fork/join the model never pays ranked launch overheads)."""
    small, large = GemmSpec(16, 32, 128, False, True), GemmSpec(256, 384, 384, False, True)
    assert "T.parallel" not in gemm_module(small, HOST, default_gemm_knobs(small, HOST)).script()
    assert "T.parallel" in gemm_module(large, HOST, default_gemm_knobs(large, HOST)).script()
    assert not GemmSpec(8, 64, 64, transpose_b=True, bias=False).tunable  # the dot kernel has no searched knobs


def _built_gemm_knobs(model: Path, db: Path) -> tuple[dict[str, Any], list[str]]:
    """The knobs attribute of the GEMM kernel as the build's GEMM pass emits it under ``--tuning-db db``,
    and the kernels the build lists as tuned."""
    from banana.compiler.frontend.importer import import_onnx
    from banana.compiler.passes.gemm import f32_gemm_pass
    from banana.compiler.pipeline import resolve_soc
    from banana.targets.backends import get_backend
    from banana.tuning.apply import apply_tuning_database

    soc = resolve_soc(None, "host")
    target = tvm.target.Target(get_backend("host").target(soc))
    mod = import_onnx(model).mod
    with apply_tuning_database(db, soc.id, "host") as applied:
        lowered = f32_gemm_pass(target)(mod)
    (func,) = [f for gv, f in lowered.functions.items() if gv.name_hint == SPEC.kernel_name]
    assert applied is not None
    return ast.literal_eval(str(func.attrs["banana.knobs"])), applied.tuned


def test_tune_rejects_wrong_gemm_knobs_resumes_and_compile_applies_them(tmp_path: Path, monkeypatch: Any,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from banana.compiler.pipeline import compile_model

    model = _mlp(tmp_path / "mlp.onnx")
    db = tmp_path / "db"
    real_module = gemm_mod.gemm_module
    wrong: list[GemmKnobs] = []

    def broken_for_one_knob(spec: GemmSpec, target: Any, knobs: GemmKnobs) -> tvm.IRModule:
        if knobs == gemm_candidates(spec, target, 4)[1]:  # the first non-default candidate reads B transposed
            wrong.append(knobs)
            return real_module(GemmSpec(spec.m, spec.n, spec.k, not spec.transpose_b, spec.bias), target, knobs)
        return real_module(spec, target, knobs)

    monkeypatch.setattr(gemm_mod, "gemm_module", broken_for_one_knob)
    kernel, entry, store_path = tune_rejects_one_and_resumes(model, db, wrong, monkeypatch)
    assert kernel.kind == "f32_gemm"
    assert entry["kernel"] == "f32_gemm" and entry["spec"] == SPEC.to_json()
    assert len(entry["measured"]) == 4 and entry["measured"][0]["knobs"] == default_gemm_knobs(SPEC, HOST).to_json()
    capsys.readouterr()
    assert main(["tune", str(model), "--backend", "host", "--trials", "4", "--db", str(db)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "f32_gemm knobs" in x]  # the CLI names the kernel
    assert f"m={SPEC.m} n={SPEC.n} k={SPEC.k}" in line and "4 candidates (0 measured now" in line, line
    monkeypatch.setattr(gemm_mod, "gemm_module", real_module)

    # force a verified non-default winner so the checks below can tell stored from default knobs
    chosen = next(m["knobs"] for m in entry["measured"] if m["ok"] and m["knobs"] != entry["default"])
    payload = json.loads(store_path.read_text())
    (key,) = payload["kernels"]
    payload["kernels"][key]["best"] = chosen
    store_path.write_text(json.dumps(payload))
    built, tuned = _built_gemm_knobs(model, db)
    assert {k: built[k] for k in ("rows", "vecs", "k_block")} == chosen and tuned == [SPEC.kernel_name]
    default, tuned = _built_gemm_knobs(model, tmp_path)  # a database without knobs: the defaults
    assert {k: default[k] for k in ("rows", "vecs", "k_block")} == entry["default"] and not tuned
    payload["kernels"][key]["best"] = entry["default"]  # the default won: built (and listed) as untuned
    store_path.write_text(json.dumps(payload))
    default, tuned = _built_gemm_knobs(model, db)
    assert {k: default[k] for k in ("rows", "vecs", "k_block")} == entry["default"] and not tuned
    payload["kernels"][key]["best"] = chosen
    store_path.write_text(json.dumps(payload))

    result = compile_model(model, backend="host", out=tmp_path / "out", tuning_db=db, verify=True)
    assert SPEC.kernel_name in result.manifest["tuning"]["tuned_tasks"]
    assert result.verify is not None and result.verify.ok  # against onnxruntime
    plain = compile_model(model, backend="host", out=tmp_path / "out2", tuning_db=tmp_path, verify=True)
    assert SPEC.kernel_name in plain.manifest["tuning"]["untuned_tasks"]
