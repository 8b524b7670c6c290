"""Fake-quant arithmetic against numpy references (the formulas ONNX QuantizeLinear defines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.fakequant import ActQuantizer, LayerPrecision, WeightQuantizer


def test_weight_per_channel_int8_matches_numpy() -> None:
    w = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32))
    wq = WeightQuantizer(w, bits=8)
    scale = np.abs(w.numpy()).max(axis=1, keepdims=True) / 127
    ref = np.clip(np.round(w.numpy() / scale), -128, 127) * scale
    np.testing.assert_allclose(wq(w).detach().numpy(), ref, rtol=0, atol=1e-6)
    assert np.abs(wq(w).detach().numpy() - w.numpy()).max() <= scale.max() / 2 + 1e-7


def test_weight_int4_blocks_have_their_own_scales() -> None:
    w = torch.ones(2, 64)
    w[:, 32:] *= 100.0  # a second block with a very different range
    wq = WeightQuantizer(w, bits=4, block=32)
    assert wq.scale.shape == (2, 2)
    codes = wq.integer(w).numpy()
    assert codes.min() >= -8 and codes.max() <= 7
    np.testing.assert_allclose(wq(w).detach().numpy(), w.numpy(), rtol=1e-6)


def test_activation_uses_the_scale_of_each_rows_step() -> None:
    lo, hi = np.array([-1.0, -4.0]), np.array([1.0, 4.0])
    aq = ActQuantizer(8, lo, hi)
    x = torch.linspace(-5, 5, 40).reshape(2, 20)
    out = aq(x, torch.tensor([0, 1])).detach().numpy()
    for row, (a, b) in enumerate(zip(lo, hi, strict=True)):
        s = (b - a) / 255
        zp = np.round(-a / s)
        ref = (np.clip(np.round(x[row].numpy() / s) + zp, 0, 255) - zp) * s
        np.testing.assert_allclose(out[row], ref, atol=1e-5)


def test_lsq_step_size_gets_a_gradient() -> None:
    aq = ActQuantizer(8, np.array([-1.0]), np.array([1.0]))
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 2
    aq(x, torch.zeros(4, dtype=torch.long)).pow(2).sum().backward()
    assert aq.scale.grad is not None and float(aq.scale.grad.abs().sum()) > 0


def test_bad_precision_is_a_one_line_error() -> None:
    with pytest.raises(BadConfigError, match="weight precision 'int3'"):
        LayerPrecision("int3", "int8")
