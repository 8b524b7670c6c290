"""PSNR/SSIM against independent references (formula, scipy's Gaussian filter as skimage does it)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from banana.compiler.quantize.fidelity import psnr, ssim


def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    # skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, data_range=255,
    # use_sample_covariance=False): 11-tap window (truncate 3.5), borders of 5 px cropped.
    a, b = a.astype(np.float64), b.astype(np.float64)

    def f(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, 1.5, truncate=3.5)

    mu_a, mu_b = f(a), f(b)
    saa, sbb, sab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return float(m[5:-5, 5:-5].mean())


def test_ssim_matches_gaussian_filter_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    assert abs(ssim(a, b) - _ssim_scipy(a, b)) < 1e-9
    assert ssim(a, a) == 1.0
    assert ssim(a, b) < 0.99


def test_psnr_formula() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, 0] = 16  # MSE = 256 / 16 = 16
    assert abs(psnr(a, b) - 10 * np.log10(255**2 / 16)) < 1e-12
    assert psnr(a, a) == float("inf")
