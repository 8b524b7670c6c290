"""Calibration replays the sampler's real trajectory and keeps per-step statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.calibrate import Calibration, calibrate, seed_condition
from banana.compiler.quantize.ranges import activation_ranges
from banana.compiler.zoo import sample


def test_inputs_are_the_samplers_trajectory(nano: torch.nn.Module, nano_cal: Calibration) -> None:
    seed = nano_cal.seeds[3]
    _, traj = sample(nano, steps=4, seed=seed, cond=seed_condition(nano, seed), shape=(1, 1, 16, 16),
                     return_trajectory=True)
    for i, rec in enumerate(traj):
        for k in ("latent", "timestep", "text"):
            np.testing.assert_array_equal(nano_cal.inputs[i][k][3:4], rec[k])
    np.testing.assert_allclose(nano_cal.timesteps, [1.0, 0.75, 0.5, 0.25])
    with torch.no_grad():  # teacher targets are the float model's outputs
        ref = nano(*(torch.from_numpy(nano_cal.inputs[2][k]) for k in ("latent", "timestep", "text"))).numpy()
    np.testing.assert_allclose(nano_cal.teacher[2], ref, atol=1e-5)


def test_ranges_are_per_step_and_differ(nano_cal: Calibration) -> None:
    per_step = activation_ranges(nano_cal, "minmax", per_step=True)
    static = activation_ranges(nano_cal, "minmax", per_step=False)
    lo, hi = per_step["blocks.0.attn.q_proj"]
    assert lo.shape == (4,) and np.all(lo <= hi)
    assert static["blocks.0.attn.q_proj"][0].shape == (1,)
    spans = [hi_ - lo_ for lo_, hi_ in zip(*per_step["patch_embed"], strict=True)]
    assert max(spans) > 1.2 * min(spans)  # the noisy first step sees a wider input range
    slo, shi = static["patch_embed"]
    assert slo[0] == per_step["patch_embed"][0].min() and shi[0] == per_step["patch_embed"][1].max()
    mse = activation_ranges(nano_cal, "mse")["blocks.0.mlp.2"]
    assert np.all(mse[1] <= per_step["blocks.0.mlp.2"][1] + 1e-6)


def test_bad_steps(nano: torch.nn.Module) -> None:
    with pytest.raises(BadConfigError, match="steps=9"):
        calibrate(nano, steps=9, seeds=[0])
