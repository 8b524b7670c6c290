"""`banana compile` on the nano DiT's multi-step QDQ export (per-step scale tables gathered by ``step``).

One artifact whose ``main`` takes ``step`` like the ONNX graph. For every step: the integer taps
equal banana's integer reference with that step's scales bit for bit (recomputed from the ONNX
file), the output is within one 8-bit step of onnxruntime running the same file with that step,
and it equals, bit for bit, the artifact compiled from the constant-scale graph of that step
(``export_qdq(step=i)``: the same arithmetic). The calibration is short (4 steps, 4 seeds): these
tests check the compiler, not the quality of the ranges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from banana.compiler.artifact import Artifact
from banana.compiler.passes.integer_verify import check_taps, onnxruntime_divergence, reference_regions
from banana.compiler.pipeline import compile_model
from banana.compiler.verify import QDQ_RTOL, onnxruntime_outputs, random_inputs, step_runs
from banana.targets.backends import get_backend

STEPS = 4


@pytest.fixture(scope="module")
def nano():
    import torch

    from banana.compiler.zoo import build_reference

    torch.set_num_threads(1)
    return build_reference("nano-dit")


@pytest.fixture(scope="module")
def exports(nano, tmp_path_factory) -> dict[str, Path]:
    """``w8a8``: the table form; ``w8a8.step{i}``: constant scales of step i; ``mixed``: INT4 (packed,
    block-wise on the MLPs) and INT8 weights, table form."""
    from banana.compiler.quantize.calibrate import calibrate
    from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
    from banana.compiler.quantize.qdq import export_qdq
    from banana.compiler.quantize.ranges import activation_ranges

    root = tmp_path_factory.mktemp("qdq_steps")
    cal = calibrate(nano, steps=STEPS, seeds=range(1000, 1004))
    ranges = activation_ranges(cal, "mse")
    layers = quantizable_layers(nano)
    w8 = QuantDenoiser(nano, {n: LayerPrecision("int8", "int8", 0) for n in layers}, ranges, cal.timesteps)
    paths = {"w8a8": export_qdq(w8, root / "w8a8.onnx")}
    for step in range(STEPS):
        paths[f"w8a8.step{step}"] = export_qdq(w8, root / f"w8a8.step{step}.onnx", step=step,
                                               float_onnx=root / "w8a8.float.onnx")
    keep8 = ("patch_embed", "t_embed", "text_pool", "final_proj")
    mixed = {n: LayerPrecision("int8", "int8", 0) if n.startswith(keep8)
             else LayerPrecision("int4", "int8", 32 if ".mlp." in n else 0) for n in layers}
    paths["mixed"] = export_qdq(QuantDenoiser(nano, mixed, ranges, cal.timesteps), root / "mixed.onnx",
                                float_onnx=root / "w8a8.float.onnx")
    return paths


def _inputs(artifact: Artifact, step: int) -> list[np.ndarray]:
    inputs = random_inputs(artifact.inputs, 0)
    names = [s.name for s in artifact.inputs]
    inputs[names.index("timestep")] = np.array([0.5], np.float32)  # a timestep in the sampler's range
    inputs[names.index("step")] = np.array(step, np.int64)
    return inputs


def _tie(d) -> bool:
    """Both runtimes' float input of the first differing code sits within 1e-5 steps of the same ``.5``
    boundary, on opposite sides: float ops (LayerNorm, GELU, onnxruntime's float32 MatMul sums) differ
    by ulps, and the flipped code cascades (see :mod:`banana.compiler.passes.integer_verify`). Every
    integer tensor is still bit-exact (checked before)."""
    if d.ours is None or d.theirs is None:
        return False
    boundary = np.floor(d.ours) + 0.5 if abs(d.ours - np.floor(d.ours) - 0.5) < 1e-5 else np.floor(d.theirs) + 0.5
    return abs(d.ours - boundary) < 1e-5 and abs(d.theirs - boundary) < 1e-5 and (d.ours - boundary) * (
        d.theirs - boundary) <= 0


def _check_steps(path: Path, out: Path, backend: str = "host", soc: str | None = None,
                 max_steps: float = 1.0) -> dict[int, np.ndarray]:
    """Compile with taps; per step, taps bit-exact and output within one step of onnxruntime. Returns outputs."""
    result = compile_model(path, backend=backend, soc=soc, out=out, integer_taps=True)
    artifact = Artifact.open(out)
    assert [s.name for s in artifact.inputs][-1] == "step" and artifact.inputs[-1].shape == ()
    assert not result.manifest["integer"]["float_fallbacks"] and len(result.manifest["integer"]["layers"]) == 50
    regions = reference_regions(path)
    taps = result.manifest["integer"]["taps"]
    outputs = {}
    for step in range(STEPS):
        inputs = _inputs(artifact, step)
        got = get_backend(backend).run(artifact, inputs)
        want = onnxruntime_outputs(path, artifact.inputs, inputs)[0]
        checks = check_taps(got[1:], taps, regions, step=step)
        assert len(checks) >= 3 * 50 and all(c.ok for c in checks), (step, [c for c in checks if not c.ok][:5])
        steps = float(np.abs(got[0] - want).max() / ((want.max() - want.min()) / 255))
        if steps > max_steps:
            feeds = {spec.name: value for spec, value in zip(artifact.inputs, inputs, strict=True)}
            split = [d for d in onnxruntime_divergence(path, feeds, got[1:], taps) if d.mismatches]
            if not split or not _tie(split[0]):
                pytest.fail(f"step {step}: {steps:.3g} steps from onnxruntime; first differing activation: {split[:1]}")
        outputs[step] = got[0]
    assert not np.array_equal(outputs[0], outputs[STEPS - 1])  # the step selects different scales
    return outputs


def test_nano_steps_host_bit_exact_per_step_and_equal_to_step_graphs(exports, tmp_path: Path) -> None:
    outputs = _check_steps(exports["w8a8"], tmp_path / "art")
    for step in range(STEPS):
        out = tmp_path / f"step{step}"
        compile_model(exports[f"w8a8.step{step}"], backend="host", out=out)
        artifact = Artifact.open(out)
        (y,) = get_backend("host").run(artifact, _inputs(Artifact.open(tmp_path / "art"), step)[:3])
        assert np.array_equal(y, outputs[step]), step


def test_nano_steps_mixed_int4_host(exports, tmp_path: Path) -> None:
    _check_steps(exports["mixed"], tmp_path / "art")


def test_nano_steps_verify_and_out_of_range(exports, tmp_path: Path) -> None:
    result = compile_model(exports["w8a8"], backend="host", out=tmp_path / "art", verify=True)
    assert result.verify.ok, result.verify
    artifact = Artifact.open(tmp_path / "art")
    assert artifact.manifest["integer"]["steps"] == STEPS
    # verify ran every step against onnxruntime, not only step 0
    assert [c.name for c in result.verify.comparisons] == [f"{o.name}@step{s}" for s in range(STEPS)
                                                            for o in artifact.outputs]
    # beyond one step only within the tie-cascade bound, and then named in the report's note
    assert all(c.max_rel <= QDQ_RTOL for c in result.verify.comparisons)
    if "cascade" in result.verify.note:
        named = result.verify.note.split("cascade bound")[1]
        assert any(f"{c.name} " in named for c in result.verify.comparisons), result.verify.note
    with pytest.raises(Exception, match=f"'step' is out of range.*steps 0..{STEPS - 1}"):
        get_backend("host").run(artifact, _inputs(artifact, STEPS))


def test_step_runs_feed_every_step_the_same_inputs() -> None:
    from banana.compiler.frontend.importer import TensorSpec

    specs = [TensorSpec("x", (2,), "float32"), TensorSpec("step", (), "int32")]
    arrays = random_inputs(specs, 3)
    runs = step_runs(specs, arrays, 3)
    assert [suffix for suffix, _ in runs] == ["@step0", "@step1", "@step2"]
    assert [int(a[1]) for _, a in runs] == [0, 1, 2] and all(a[1].dtype == np.int32 for _, a in runs)
    assert all(a[0] is arrays[0] for _, a in runs)
    assert step_runs(specs, arrays, 0) == [("", arrays)]  # constant scales: one run as drawn
    assert step_runs(specs[:1], arrays[:1], 3) == [("", arrays[:1])]  # no step input


def test_random_inputs_give_step_a_valid_value() -> None:
    from banana.compiler.frontend.importer import TensorSpec

    specs = [TensorSpec("x", (2,), "float32"), TensorSpec("step", (), "int64"), TensorSpec("ids", (3,), "int64")]
    assert int(random_inputs(specs, 0)[1]) == 0  # step count unknown: step 0 exists in every model
    drawn = {int(random_inputs(specs, seed, steps=4)[1]) for seed in range(40)}
    assert drawn == {0, 1, 2, 3}
    assert random_inputs(specs, 0)[1].shape == () and random_inputs(specs, 0)[1].dtype == np.int64


@pytest.mark.slow
def test_nano_steps_arm64_under_qemu_bit_exact_and_equal_to_host(exports, tmp_path: Path) -> None:
    arm = _check_steps(exports["w8a8"], tmp_path / "arm", backend="cpu", soc="SM8650")
    host = _check_steps(exports["w8a8"], tmp_path / "host")
    artifact = Artifact.open(tmp_path / "arm")
    assert artifact.manifest["run"]["executor"] == "qemu-aarch64"
    with pytest.raises(Exception, match="'step' is out of range"):
        get_backend("cpu").run(artifact, _inputs(artifact, STEPS))
    for step in range(STEPS):  # integer tensors are bit-exact on both; float ops may differ by ulps
        assert np.abs(arm[step] - host[step]).max() <= 1e-5 * max(1.0, float(np.abs(host[step]).max())), step
