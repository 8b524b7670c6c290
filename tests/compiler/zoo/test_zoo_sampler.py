"""Few-step sampler: determinism, trajectories, callable denoisers, decode."""

import numpy as np
import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo import build_reference, class_condition, consistency_timesteps, decode, sample
from banana.compiler.zoo.sampler import torch_denoiser

SHAPE = (3, 1, 16, 16)


@pytest.fixture(scope="module")
def model():
    return build_reference("nano-dit-random", seed=0)


def test_same_seed_identical_different_seed_differs(model):
    cond = class_condition([1, 2, 3])
    a = sample(model, steps=3, seed=7, cond=cond, shape=SHAPE)
    b = sample(model, steps=3, seed=7, cond=cond, shape=SHAPE)
    c = sample(model, steps=3, seed=8, cond=cond, shape=SHAPE)
    assert a.shape == SHAPE and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_trajectory_feeds_exact_denoiser_inputs(model):
    calls = []
    net = torch_denoiser(model)

    def recording(latent, timestep, text):
        calls.append((latent.copy(), timestep.copy(), text.copy()))
        return net(latent, timestep, text)

    cond = class_condition(4)  # [T, D] broadcasts over the batch
    x, traj = sample(recording, steps=4, seed=1, cond=cond, shape=SHAPE, return_trajectory=True)
    assert len(traj) == len(calls) == 4
    np.testing.assert_allclose([s["timestep"][0] for s in traj], [1.0, 0.75, 0.5, 0.25])
    for step, (lat, t, text) in zip(traj, calls, strict=True):
        np.testing.assert_array_equal(step["latent"], lat)
        np.testing.assert_array_equal(step["timestep"], t)
        np.testing.assert_array_equal(step["text"], text)
        assert text.shape == (3, 4, 64)
    np.testing.assert_array_equal(x, net(*calls[-1]))
    # the first input is pure N(0, 1) noise from the seed
    np.testing.assert_array_equal(traj[0]["latent"], np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32))
    np.testing.assert_array_equal(x, sample(model, steps=4, seed=1, cond=cond, shape=SHAPE))


def test_rejects_bad_arguments(model):
    with pytest.raises(BadConfigError, match="cond"):
        sample(model, seed=0, cond=np.zeros((2, 4, 64), np.float32), shape=SHAPE)
    with pytest.raises(BadConfigError, match="steps"):
        consistency_timesteps(0)
    with pytest.raises(BadConfigError, match="timesteps"):
        sample(model, seed=0, cond=class_condition(0), shape=SHAPE, timesteps=[1.5, 0.5])


def test_decode():
    x = np.array([-1.0, -2.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 1, 5)
    img = decode(x)
    assert img.dtype == np.uint8 and img.shape == (1, 1, 5, 1)
    assert img.ravel().tolist() == [0, 0, 128, 255, 255]


def test_torch_denoiser_is_numpy_in_numpy_out(model):
    f = torch_denoiser(model)
    out = f(np.zeros(SHAPE, np.float32), np.full(3, 0.5, np.float32), class_condition([0, 1, 2]))
    assert isinstance(out, np.ndarray) and out.shape == SHAPE
    assert torch.is_grad_enabled()
