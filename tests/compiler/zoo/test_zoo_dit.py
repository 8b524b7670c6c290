"""DiT configs, analytic parameter/FLOP accounting and forward behaviour."""

import numpy as np
import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo import DIT_CONFIGS, DiT, DiTConfig, count_params, dit_layer_shapes
from banana.compiler.zoo.dit import repeat_kv


@pytest.mark.parametrize("name", ["nano", "small"])
def test_count_params_matches_materialised_model(name):
    model = DiT(DIT_CONFIGS[name])
    assert count_params(DIT_CONFIGS[name]) == sum(p.numel() for p in model.parameters())


def test_config_sizes():
    nano, small, big = DIT_CONFIGS["nano"], DIT_CONFIGS["small"], DIT_CONFIGS["1.8b"]
    assert count_params(nano) <= 1_250_000  # 5 MB of fp32 weights
    assert (nano.q_heads, nano.kv_heads) == (8, 2)
    assert small.hidden >= 384 and small.tokens >= 256
    assert 1.6e9 <= count_params(big) <= 2.0e9
    assert big.tokens == 1024 and big.latent_channels == 16
    # 4K (3840x2160 at /8 -> 480x270 latents) is describable, parameters do not change
    four_k = big.at_resolution(480)
    assert four_k.tokens == 240 * 240 and count_params(four_k) == count_params(big)


def test_layer_shapes_totals_and_attention_entries():
    cfg = DIT_CONFIGS["1.8b"]
    layers = dit_layer_shapes(cfg, (64, 64))
    assert sum(layer["params"] for layer in layers) == count_params(cfg)
    attn = [layer for layer in layers if layer["kind"] == "attention"]
    assert len(attn) == 2 * cfg.depth
    self_attn = attn[0]
    assert (self_attn["L_q"], self_attn["L_kv"], self_attn["q_heads"], self_attn["kv_heads"]) == (1024, 1024, 16, 4)
    assert self_attn["head_dim"] == 128 and attn[1]["L_kv"] == cfg.text_tokens
    fc1 = next(layer for layer in layers if layer["name"] == "blocks.0.mlp.fc1")
    assert (fc1["M"], fc1["K"], fc1["N"]) == (1024, 2048, 8192)
    assert fc1["flops"] == 2 * 1024 * 2048 * 8192
    # quadrupling the side quadruples linear rows and gives 16x attention FLOPs
    big = dit_layer_shapes(cfg, 128)
    assert big[-1]["M"] == 4 * layers[-1]["M"]
    assert [x for x in big if x["kind"] == "attention"][0]["flops"] == 16 * self_attn["flops"]


def test_bad_configs_raise():
    with pytest.raises(BadConfigError, match="kv_heads"):
        DiTConfig(q_heads=8, kv_heads=3)
    with pytest.raises(BadConfigError, match="patch_size"):
        dit_layer_shapes(DIT_CONFIGS["nano"], 18)
    with pytest.raises(BadConfigError, match="attention"):
        DiT(DIT_CONFIGS["nano"], attention="flash")


def test_repeat_kv_matches_repeat_interleave():
    x = torch.randn(2, 2, 5, 3)
    torch.testing.assert_close(repeat_kv(x, 4), x.repeat_interleave(4, dim=1), rtol=0, atol=0)


def _manual_attention(attn, x, ctx):
    """Independent GQA reference: per query head, index its kv head explicitly."""
    b, lq, _ = x.shape
    d, hq, hkv = attn.head_dim, attn.q_heads, attn.kv_heads
    q = attn.q_proj(x).reshape(b, lq, hq, d).numpy()
    k = attn.k_proj(ctx).reshape(b, -1, hkv, d).numpy()
    v = attn.v_proj(ctx).reshape(b, -1, hkv, d).numpy()
    out = np.zeros_like(q)
    for h in range(hq):
        g = h // (hq // hkv)
        s = np.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, g]) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, h] = np.einsum("bqk,bkd->bqd", p, v[:, :, g])
    return attn.o_proj(torch.from_numpy(out.reshape(b, lq, hq * d))).numpy()


@torch.no_grad()
def test_gqa_attention_against_numpy_and_sdpa():
    torch.manual_seed(0)
    model = DiT(DIT_CONFIGS["nano"])
    attn = model.blocks[0].cross
    x, ctx = torch.randn(2, 16, 128), torch.randn(2, 4, 64)
    np.testing.assert_allclose(attn(x, ctx).numpy(), _manual_attention(attn, x, ctx), rtol=1e-4, atol=1e-5)
    attn.impl = "sdpa"
    np.testing.assert_allclose(attn(x, ctx).numpy(), _manual_attention(attn, x, ctx), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_forward_shape_and_conditioning_matters():
    torch.manual_seed(0)
    cfg = DIT_CONFIGS["nano"]
    model = DiT(cfg).eval()
    x = torch.randn(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    t, text = torch.tensor([0.2, 0.7]), torch.randn(2, cfg.text_tokens, cfg.text_dim)
    y = model(x, t, text)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert not torch.allclose(model(x, t, text + 1.0), y)
    assert not torch.allclose(model(x, t + 0.1, text), y)
    # batch elements are independent
    torch.testing.assert_close(model(x[1:], t[1:], text[1:]), y[1:], rtol=1e-5, atol=1e-5)


def test_zero_init_gives_zero_output():
    cfg = DIT_CONFIGS["nano"]
    model = DiT(cfg).zero_init_()
    y = model(torch.randn(1, 1, 16, 16), torch.tensor([0.5]), torch.randn(1, cfg.text_tokens, cfg.text_dim))
    assert torch.count_nonzero(y) == 0
