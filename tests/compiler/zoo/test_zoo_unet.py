"""SD-style nano UNet: structure and forward."""

import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo import UNET_CONFIGS, UNet, UNetConfig


@torch.no_grad()
def test_forward_shape_and_structure():
    torch.manual_seed(0)
    cfg = UNET_CONFIGS["nano"]
    model = UNet(cfg).eval()
    x = torch.randn(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    t, text = torch.tensor([0.1, 0.9]), torch.randn(2, cfg.text_tokens, cfg.text_dim)
    y = model(x, t, text)
    assert y.shape == x.shape
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"GroupNorm", "SiLU", "Conv2d", "ResBlock", "AttnBlock"} <= kinds
    assert any(m.stride == (2, 2) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert not torch.allclose(model(x, t, text + 1.0), y)  # cross-attention reaches the output
    assert not torch.allclose(model(x, t + 0.3, text), y)  # timestep reaches the output
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_bad_config():
    with pytest.raises(BadConfigError, match="groups"):
        UNetConfig(channels=(30, 64), groups=8)
