"""The sweep's fidelity objective: PSNR of a configuration's final samples vs one fixed reference.

The reference is the float model sampled with the most steps the space offers, at the fixed
fidelity seeds, so fewer steps and coarser precision both cost fidelity on one scale (a reference
at the candidate's own step count would make fewer steps look free). The candidate runs the very
ONNX graphs the compile stage takes -- the float export, or the quantizer's per-step QDQ graphs
(step ``i`` of the sampler calls graph ``model.step{i}.onnx``) -- in onnxruntime, with the same
seeds, noise and conditions as the reference. PSNR/SSIM are :mod:`banana.compiler.quantize.fidelity`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo.export import INPUT_NAMES, OUTPUT_NAME

FIDELITY_SEEDS = tuple(range(16))


class _StepGraphs:
    """A sampler denoiser that calls graph ``i % len(graphs)`` on its ``i``-th call (one sample = one
    call per step, in order), so per-step QDQ graphs see the step they were calibrated for."""

    def __init__(self, paths: Sequence[Path]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
        names = {i.name for i in self.sessions[0].get_inputs()}
        if names != set(INPUT_NAMES):
            raise BadConfigError(f"{paths[0]}: inputs {sorted(names)}; a sweep needs a denoiser with inputs "
                                 f"{', '.join(INPUT_NAMES)}")
        self.calls = 0

    def __call__(self, latent: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        session = self.sessions[self.calls % len(self.sessions)]
        self.calls += 1
        feed = dict(zip(INPUT_NAMES, (latent, timestep, text), strict=True))
        names = [o.name for o in session.get_outputs()]
        out = session.run([OUTPUT_NAME if OUTPUT_NAME in names else names[0]], feed)[0]
        return np.asarray(out, dtype=np.float32)

    def input_shape(self, name: str) -> tuple[int, ...]:
        for i in self.sessions[0].get_inputs():
            if i.name == name:
                if not all(isinstance(d, int) for d in i.shape):
                    raise BadConfigError(f"input {name}: symbolic shape {i.shape}; a sweep needs static shapes")
                return tuple(i.shape)
        raise BadConfigError(f"no input named {name}")


def _conditions(model: str, graphs: _StepGraphs, seeds: Sequence[int]) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Latent shape and the per-seed conditions: the zoo's class conditions, or seeded noise for an ONNX file."""
    if model.startswith("zoo:"):
        from banana.compiler.quantize.api import load_model
        from banana.compiler.quantize.calibrate import model_shapes, seed_condition

        net, _ = load_model(model)
        shape, _, _ = model_shapes(net)
        return shape, [seed_condition(net, s) for s in seeds]
    text = graphs.input_shape("text")
    return graphs.input_shape("latent"), [np.random.default_rng(10_000 + s).standard_normal(text, dtype=np.float32)
                                          for s in seeds]


def final_images(model: str, graphs: Sequence[Path], steps: int, seeds: Sequence[int] = FIDELITY_SEEDS) -> np.ndarray:
    """Decoded final samples (uint8 ``[N, H, W, C]``) of ``graphs`` run by onnxruntime at ``steps`` steps."""
    from banana.compiler.zoo import decode, sample

    if len(graphs) not in (1, steps):
        raise BadConfigError(f"{len(graphs)} step graphs for a {steps}-step sampler")
    runner = _StepGraphs(graphs)
    shape, conds = _conditions(model, runner, seeds)
    outs = []
    for seed, cond in zip(seeds, conds, strict=True):
        runner.calls = 0
        outs.append(sample(runner, steps=steps, seed=int(seed), cond=cond, shape=shape))
    return decode(np.concatenate(outs))


def reference_images(model: str, float_onnx: Path, steps: int, seeds: Sequence[int] = FIDELITY_SEEDS) -> np.ndarray:
    """The float model's final samples at ``steps``: torch for zoo models (the source of truth), else the ONNX."""
    if model.startswith("zoo:"):
        from banana.compiler.quantize.api import load_model
        from banana.compiler.quantize.fidelity import final_samples

        net, _ = load_model(model)
        return final_samples(net, net, steps=steps, seeds=seeds)
    return final_images(model, [float_onnx], steps, seeds)


def psnr_ssim(reference: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    from banana.compiler.quantize.fidelity import compare

    result = compare(reference, images)
    return result.psnr_db, result.ssim
