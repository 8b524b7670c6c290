"""Offline training/evaluation data for the ``nano`` DiT: scikit-learn's digits at 16x16.

The ``nano`` model works directly in pixel space: its "latent" is the 1x16x16 grey image scaled
to ``[-1, 1]`` (-1 = background). The class label reaches the DiT as "text tokens": a fixed,
seeded table maps class ``k`` to ``[T, D_text]`` embeddings (:func:`class_condition`), so the
text encoder stays outside the exported DiT and its ONNX input is a plain text tensor.

``load_digits`` ships inside scikit-learn (no download); the 8x8 images are upscaled bilinearly.
The split is fixed: the last :data:`HELD_OUT` images are never trained on.
"""

from __future__ import annotations

import numpy as np

from banana.compiler.errors import BadConfigError

NUM_CLASSES = 10
IMAGE_SIZE = 16
TEXT_TOKENS = 4
TEXT_DIM = 64
HELD_OUT = 197  # 1797 digits -> 1600 train / 197 held out
_CONDITION_SEED = 0xBA7A7A


def _upscale(images8: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (half-pixel centres, edge clamp) upscaling in numpy: identical on every machine."""
    n, src = images8.shape[0], images8.shape[-1]
    coords = (np.arange(size, dtype=np.float64) + 0.5) * (src / size) - 0.5
    coords = np.clip(coords, 0, src - 1)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = coords - lo
    rows = images8[:, lo, :] * (1 - frac)[None, :, None] + images8[:, hi, :] * frac[None, :, None]
    out = rows[:, :, lo] * (1 - frac)[None, None, :] + rows[:, :, hi] * frac[None, None, :]
    return out.reshape(n, size, size)


def load_digit_images(split: str = "train", size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N,1,size,size] float32 in [-1,1], labels [N] int64)`` for ``"train"|"test"|"all"``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = _upscale(d.images.astype(np.float64) / 16.0, size) * 2.0 - 1.0
    imgs = imgs[:, None].astype(np.float32)
    labels = d.target.astype(np.int64)
    cut = len(imgs) - HELD_OUT
    if split == "train":
        return imgs[:cut], labels[:cut]
    if split == "test":
        return imgs[cut:], labels[cut:]
    if split == "all":
        return imgs, labels
    raise BadConfigError(f"digits split {split!r}; expected 'train', 'test' or 'all'")


def condition_table(tokens: int = TEXT_TOKENS, dim: int = TEXT_DIM) -> np.ndarray:
    """Fixed ``[10, tokens, dim]`` class -> text-token table (unit-variance, seeded)."""
    rng = np.random.default_rng(_CONDITION_SEED)
    return rng.standard_normal((NUM_CLASSES, tokens, dim)).astype(np.float32)


def class_condition(k: int | np.ndarray, tokens: int = TEXT_TOKENS, dim: int = TEXT_DIM) -> np.ndarray:
    """Text tokens for digit class ``k``: ``[T, D]`` for an int, ``[B, T, D]`` for an array of classes."""
    ks = np.asarray(k, dtype=np.int64)
    if ks.size and (ks.min() < 0 or ks.max() >= NUM_CLASSES):
        raise BadConfigError(f"digit class {k!r} out of range 0..{NUM_CLASSES - 1}")
    return condition_table(tokens, dim)[ks]
