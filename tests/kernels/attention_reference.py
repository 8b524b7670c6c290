"""numpy float64 attention with explicit K/V head repetition: the independent golden for the kernels."""

from __future__ import annotations

import numpy as np

from banana.kernels.attention import AttentionSpec


def reference_attention(q, k, v, spec: AttentionSpec, mask):
    group = spec.group
    if spec.head_map == "interleave":
        kr, vr = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    else:
        kr, vr = np.tile(k, (1, group, 1, 1)), np.tile(v, (1, group, 1, 1))
    s = (q.astype(np.float64) @ kr.transpose(0, 1, 3, 2).astype(np.float64)) * spec.scale
    if mask is not None:
        s = s + mask
    if spec.causal:
        s = s + np.triu(np.full((spec.q_len, spec.kv_len), -np.inf), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return (s @ vr.astype(np.float64)).astype(np.float32)
