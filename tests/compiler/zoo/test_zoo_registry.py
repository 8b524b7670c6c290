"""Named reference models, example inputs, data, and the trained nano DiT's quality."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo import (
    NANO_DIT_WEIGHTS,
    REFERENCE_MODELS,
    build_reference,
    class_condition,
    example_inputs,
    load_digit_images,
    sample,
)


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_build_and_forward(name):
    model = build_reference(name)
    assert not model.training
    inputs = example_inputs(name, batch=2)
    assert set(inputs) == {"latent", "timestep", "text"}
    assert all(v.dtype == np.float32 for v in inputs.values())
    with torch.no_grad():
        out = model(*(torch.from_numpy(inputs[k]) for k in ("latent", "timestep", "text")))
    assert out.shape == inputs["latent"].shape and torch.isfinite(out).all()


def test_seeds_and_determinism():
    a, b, c = (build_reference("nano-unet", seed=s) for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x, y, z = example_inputs("small-dit", 2, 5), example_inputs("small-dit", 2, 5), example_inputs("small-dit", 2, 6)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(x["latent"], z["latent"])
    assert x["latent"].shape == (2, 4, 32, 32)


def test_unknown_name_lists_known_ones():
    with pytest.raises(BadConfigError, match="nano-dit-random"):
        build_reference("huge-dit")
    with pytest.raises(BadConfigError, match="nano-unet"):
        example_inputs("huge-dit")


def test_weights_file_small_with_metadata():
    assert NANO_DIT_WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    with safe_open(str(NANO_DIT_WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    assert meta["config"] == "nano" and int(meta["steps"]) > 0
    assert float(meta["final_loss"]) < 0.2 and "seed" in meta


def test_digits_data_and_conditions():
    train, ytrain = load_digit_images("train")
    test, ytest = load_digit_images("test")
    assert train.shape[1:] == (1, 16, 16) and len(train) + len(test) == 1797
    assert train.min() >= -1.0 and train.max() <= 1.0 and train.dtype == np.float32
    assert set(ytest.tolist()) == set(range(10))
    c = class_condition(np.array([3, 3, 5]))
    assert c.shape == (3, 4, 64) and np.array_equal(c[0], c[1]) and not np.array_equal(c[0], c[2])
    with pytest.raises(BadConfigError, match="class"):
        class_condition(10)


def _x0_mse(model, x0, labels, t=0.5, seed=0):
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(x0.shape, dtype=np.float32)
    xt = (1 - t) * x0 + t * eps
    with torch.no_grad():
        pred = model(torch.from_numpy(xt), torch.full((len(x0),), t), torch.from_numpy(class_condition(labels)))
    return float(np.mean((pred.numpy() - x0) ** 2))


def test_trained_model_denoises_held_out_digits():
    x0, labels = load_digit_images("test")
    trained = _x0_mse(build_reference("nano-dit"), x0, labels)
    random = _x0_mse(build_reference("nano-dit-random"), x0, labels)
    assert trained <= 0.5 * random
    assert trained < 0.5 * float(np.mean((x0 - x0.mean()) ** 2))  # beats predicting the mean image


def test_trained_samples_are_class_conditional():
    """4-step samples of class k are closer to the held-out mean image of k than of other classes."""
    x0, labels = load_digit_images("test")
    means = np.stack([x0[labels == k].mean(0) for k in range(10)])
    model = build_reference("nano-dit")
    classes = np.repeat(np.arange(10), 2)
    xs = sample(model, steps=4, seed=0, cond=class_condition(classes), shape=(20, 1, 16, 16))
    dist = ((xs[:, None] - means[None]) ** 2).mean(axis=(2, 3, 4))
    assert (dist.argmin(1) == classes).mean() >= 0.7
