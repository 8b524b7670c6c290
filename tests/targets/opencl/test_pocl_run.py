"""End-to-end: ONNX -> Relax -> dlight-scheduled OpenCL -> launch plan -> PoCL, vs onnxruntime."""

from __future__ import annotations

import logging
import time

import numpy as np
import onnxruntime as ort
import pytest
import tvm.relax.frontend.onnx  # noqa: F401  (registers relax.frontend.onnx)
from tvm import relax

from banana.targets.opencl import (
    adreno_target,
    extract_launch_plan,
    lower_for_opencl,
    profile_on_pocl,
    run_on_pocl,
    schedule_rules_used,
)

log = logging.getLogger(__name__)


def _import(model):
    mod = relax.frontend.onnx.from_onnx(model, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params.get("main", [])]


def _reference(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})


@pytest.mark.parametrize(
    "name", ["matmul_add", "layernorm_gelu", "softmax", "conv_groupnorm_silu", "gqa_attention"]
)
def test_pocl_matches_onnxruntime(name, onnx_models):
    rng = np.random.default_rng(42)
    model = onnx_models[name](rng)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = rng.standard_normal(dims).astype(np.float32)

    mod, params = _import(model)
    target = adreno_target()
    t0 = time.perf_counter()
    lowered = lower_for_opencl(mod, target)
    plan = extract_launch_plan(lowered, target)
    compile_s = time.perf_counter() - t0

    run = profile_on_pocl(plan, [x], params)
    warm = profile_on_pocl(plan, [x], params)
    ref = _reference(model, x)
    log.info(
        "%s: compile %.2f s, PoCL first run %.0f ms (program build %.0f ms), warm %.1f ms, kernels %s, rules %s",
        name, compile_s, run.wall_ms, run.build_ms, warm.wall_ms,
        [t.kernel for t in warm.timings], schedule_rules_used(lowered),
    )
    assert len(run.outputs) == len(ref)
    for got, want in zip(run.outputs, ref, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(warm.outputs[0], run.outputs[0])
    assert len(warm.timings) == len(plan.steps) and all(t.time_ms >= 0 for t in warm.timings)


@pytest.mark.parametrize("name", ["matmul_add", "gqa_attention"])
def test_matmuls_get_the_dlight_matmul_schedule(name, onnx_models):
    model = onnx_models[name](np.random.default_rng(0))
    mod, _ = _import(model)
    rules = schedule_rules_used(lower_for_opencl(mod, adreno_target()))
    matmuls = {f: r for f, r in rules.items() if "matmul" in f}
    assert matmuls, rules
    assert set(matmuls.values()) == {"Matmul"}, rules


def test_standalone_reshape_becomes_a_view():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["shape"], value=numpy_helper.from_array(np.array([48, 64], np.int64), "s")
            ),
            helper.make_node("Reshape", ["x", "shape"], ["x2"]),
            helper.make_node("MatMul", ["x2", "w"], ["out"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [48, 32])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    mod, params = _import(model)
    target = adreno_target()
    plan = extract_launch_plan(lower_for_opencl(mod, target), target)
    views = [b for b in plan.buffers if b.kind == "view"]
    assert [v.shape for v in views] == [(48, 64)]
    assert plan.buffers[views[0].base].kind == "input"
    assert len(plan.steps) == 1  # only the matmul launches
    x = rng.standard_normal((1, 48, 64)).astype(np.float32)
    np.testing.assert_allclose(run_on_pocl(plan, [x], params)[0], x.reshape(48, 64) @ w, rtol=1e-4, atol=1e-5)


def test_wrong_input_shape_is_rejected(onnx_models):
    from banana.compiler.errors import BadConfigError

    model = onnx_models["softmax"](np.random.default_rng(0))
    mod, params = _import(model)
    target = adreno_target()
    plan = extract_launch_plan(lower_for_opencl(mod, target), target)
    with pytest.raises(BadConfigError, match="input 'x'"):
        run_on_pocl(plan, [np.zeros((2, 4, 32, 49), np.float32)], params)
