"""PTQ range selection from calibration statistics: min-max, percentile and MSE-optimal clipping.

Each returns, per layer, ``(lo[S], hi[S])`` tables -- one range per sampling step, or a single
one (``S = 1``) with ``per_step=False`` -- which :class:`~.fakequant.QuantDenoiser` takes as its
activation initialisation, and weight scales per channel/block for the MSE method.
"""

from __future__ import annotations

import numpy as np

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.calibrate import Calibration, LayerStats

METHODS = ("minmax", "percentile", "mse")


def _quant_error(values: np.ndarray, lo: float, hi: float, bits: int) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2**bits - 1
    scale = max((hi - lo) / qmax, 1e-12)
    zp = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zp, 0, qmax)
    return float(np.mean(((q - zp) * scale - values) ** 2))


def select_range(stats: LayerStats, method: str, bits: int = 8, percentile: float = 99.99) -> tuple[float, float]:
    """One activation range ``(lo, hi)`` for one tensor (and step) by ``method``."""
    if method == "minmax":
        return stats.lo, stats.hi
    v = stats.values
    if method == "percentile":
        return float(np.percentile(v, 100 - percentile)), float(np.percentile(v, percentile))
    if method == "mse":
        best, best_err = (stats.lo, stats.hi), np.inf
        for alpha in np.linspace(0.3, 1.0, 36):
            lo, hi = stats.lo * alpha, stats.hi * alpha
            err = _quant_error(v, lo, hi, bits)
            if err < best_err:
                best, best_err = (lo, hi), err
        return float(best[0]), float(best[1])
    raise BadConfigError(f"range method {method!r}; expected one of {', '.join(METHODS)}")


def activation_ranges(cal: Calibration, method: str = "mse", *, per_step: bool = True, bits: int | dict = 8,
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``layer -> (lo[S], hi[S])`` (``S = cal.steps`` per step, else 1); ``bits`` may be per layer."""
    out = {}
    for name, per in cal.stats.items():
        b = bits.get(name, 8) if isinstance(bits, dict) else bits
        stats = per if per_step else [cal.pooled(name)]
        pairs = [select_range(s, method, b) for s in stats]
        out[name] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    return out


def mse_weight_scale(w: np.ndarray, bits: int, block: int = 0) -> np.ndarray:
    """Per-channel (or per-block) symmetric scales minimising the weight's rounding MSE, ``[N, G]``."""
    n, k = w.shape
    groups = k // block if block and block < k else 1
    wg = w.reshape(n, groups, -1).astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    amax = np.maximum(np.abs(wg).max(axis=-1), 1e-12)
    best = amax / qmax
    best_err = np.full(amax.shape, np.inf)
    for alpha in np.linspace(0.5, 1.0, 26):
        s = (amax * alpha / qmax)[..., None]
        err = (((np.clip(np.round(wg / s), -qmax - 1, qmax) * s) - wg) ** 2).mean(axis=-1)
        better = err < best_err
        best = np.where(better, s[..., 0], best)
        best_err = np.where(better, err, best_err)
    return best.astype(np.float32)
