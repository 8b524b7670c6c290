"""Fake-quant simulation of a denoiser in torch: the model every other quantize stage measures.

Each ``nn.Linear`` (and the patch-embedding ``nn.Conv2d``, a linear map over patches) is wrapped
in :class:`QuantLayer`: its weight is fake-quantized symmetrically per output channel (INT8/INT4)
or per block of ``block`` input channels (INT4), and its *input* activation asymmetrically with
**one (scale, zero point) per sampling step** -- diffusion activations change range with the
timestep, and phone NPUs/DSPs cannot quantize dynamically, so a few-step model ships a tiny
table of static ranges. Step sizes are LSQ parameters (straight-through rounding, gradient
scaling) so :mod:`.dqat` can train them; the same arithmetic is what :mod:`.qdq` writes as
QuantizeLinear/DequantizeLinear, so ONNX and torch agree to within one quantization step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from banana.compiler.errors import BadConfigError

WEIGHT_PRECISIONS = ("int4", "int8", "fp16", "fp32")
ACT_PRECISIONS = ("int8", "int16", "fp16", "fp32")
BITS = {"int4": 4, "int8": 8, "int16": 16, "fp16": 16, "fp32": 32}


@dataclass(frozen=True)
class LayerPrecision:
    """Precision of one layer: weight and input-activation formats, INT4 block size (0 = per channel)."""

    weight: str = "int8"
    act: str = "int8"
    block: int = 0

    def __post_init__(self) -> None:
        if self.weight not in WEIGHT_PRECISIONS:
            raise BadConfigError(f"weight precision {self.weight!r}; expected one of {', '.join(WEIGHT_PRECISIONS)}")
        if self.act not in ACT_PRECISIONS:
            raise BadConfigError(f"activation precision {self.act!r}; expected one of {', '.join(ACT_PRECISIONS)}")
        if self.block < 0:
            raise BadConfigError(f"weight block size {self.block}; expected >= 0")

    @property
    def tag(self) -> str:
        w = self.weight.upper().replace("INT", "W").replace("FP", "WF")
        a = self.act.upper().replace("INT", "A").replace("FP", "AF")
        return f"{w}{a}" + (f"b{self.block}" if self.block and self.weight == "int4" else "")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward (straight-through estimator)."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value ``x``, gradient ``g * dL/dx`` (LSQ's step-size gradient scaling)."""
    return (x - x * g).detach() + x * g


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[N_out, K]`` (a conv over patches is a linear map over flattened patches)."""
    w = module.weight
    return w.reshape(w.shape[0], -1)


def _weight_qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _act_qrange(bits: int) -> tuple[int, int]:
    return 0, 2**bits - 1


class WeightQuantizer(nn.Module):
    """Symmetric per-channel (``block=0``) or per-block fake quantization with learnable scales."""

    def __init__(self, w: torch.Tensor, bits: int, block: int = 0, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        n, k = w.shape
        if block and block < k and k % block:
            raise BadConfigError(f"weight block size {block} does not divide K={k}")
        self.bits, self.block = bits, (block if block and block < k else 0)  # one block >= K: per channel
        self.qmin, self.qmax = _weight_qrange(bits)
        groups = k // self.block if self.block else 1
        if scale is None:
            amax = w.detach().reshape(n, groups, -1).abs().amax(dim=-1)
            scale = torch.clamp(amax / self.qmax, min=1e-8)
        self.scale = nn.Parameter(scale.reshape(n, groups).clone().float())
        self._g = 1.0 / math.sqrt(w.numel() * self.qmax)

    def integer(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes (float tensor of whole numbers), ``[N, K]``."""
        n, k = w.shape
        s = torch.clamp(self.scale.detach(), min=1e-8)[:, :, None]
        q = torch.clamp(torch.round(w.reshape(n, s.shape[1], -1) / s), self.qmin, self.qmax)
        return q.reshape(n, k)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n, k = w.shape
        s = grad_scale(torch.clamp(self.scale, min=1e-8), self._g)[:, :, None]
        q = torch.clamp(round_ste(w.reshape(n, s.shape[1], -1) / s), self.qmin, self.qmax)
        return (q * s).reshape(n, k)


class ActQuantizer(nn.Module):
    """Asymmetric (unsigned, zero point) fake quantization with one range per sampling step."""

    def __init__(self, bits: int, lo: np.ndarray, hi: np.ndarray) -> None:
        super().__init__()
        self.bits = bits
        self.qmin, self.qmax = _act_qrange(bits)
        lo_t = torch.clamp(torch.as_tensor(np.asarray(lo, np.float64)), max=0.0)
        hi_t = torch.clamp(torch.as_tensor(np.asarray(hi, np.float64)), min=0.0)
        scale = torch.clamp((hi_t - lo_t) / self.qmax, min=1e-8)
        zp = torch.clamp(torch.round(-lo_t / scale), self.qmin, self.qmax)
        self.scale = nn.Parameter(scale.float())
        self.zero_point = nn.Parameter(zp.float())
        self._numel_hint = 1.0

    def params_at(self, step: int) -> tuple[float, int]:
        """Exported (scale, integer zero point) of one step."""
        s = float(torch.clamp(self.scale[step].detach(), min=1e-8))
        zp = int(torch.clamp(torch.round(self.zero_point[step].detach()), self.qmin, self.qmax))
        return s, zp

    def forward(self, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        g = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qmax)
        s = grad_scale(torch.clamp(self.scale, min=1e-8), g)[step].reshape(shape)
        zp = torch.clamp(round_ste(self.zero_point), self.qmin, self.qmax)[step].reshape(shape)
        q = torch.clamp(round_ste(x / s) + zp, self.qmin, self.qmax)
        return (q - zp) * s


class StepContext:
    """Shared by every :class:`QuantLayer` of a model: the sampling-step index of each batch row."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None


class QuantLayer(nn.Module):
    """A linear/conv layer with weight and input fake quantization (or FP16 casts) at ``precision``."""

    def __init__(self, inner: nn.Module, precision: LayerPrecision, ctx: StepContext,
                 act_range: tuple[np.ndarray, np.ndarray] | None, steps: int,
                 weight_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.inner, self.precision, self.ctx = inner, precision, ctx
        self.wq: WeightQuantizer | None = None
        self.aq: ActQuantizer | None = None
        if precision.weight in ("int4", "int8"):
            # conv weights stay per channel: ONNX blocks a Conv weight along C only, not over C*kh*kw
            block = precision.block if precision.weight == "int4" and isinstance(inner, nn.Linear) else 0
            self.wq = WeightQuantizer(weight_matrix(inner).detach(), BITS[precision.weight], block, weight_scale)
        if precision.act in ("int8", "int16"):
            if act_range is None:
                raise BadConfigError("integer activations need calibration ranges")
            lo, hi = act_range
            if len(lo) != steps:
                raise BadConfigError(f"activation range table has {len(lo)} steps; expected {steps}")
            self.aq = ActQuantizer(BITS[precision.act], lo, hi)

    def quant_weight(self) -> torch.Tensor:
        w = self.inner.weight
        if self.wq is not None:
            return self.wq(weight_matrix(self.inner)).reshape(w.shape)
        if self.precision.weight == "fp16":
            return w.half().float()
        return w

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.aq is not None:
            if self.ctx.step is None:
                raise BadConfigError("QuantLayer called without a sampling step (use QuantDenoiser)")
            return self.aq(x, self.ctx.step)
        if self.precision.act == "fp16":
            return x.half().float()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_input(x)
        w = self.quant_weight()
        if isinstance(self.inner, nn.Conv2d):
            m = self.inner
            return nn.functional.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return nn.functional.linear(x, w, self.inner.bias)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Qualified names of every layer banana quantizes: ``nn.Linear`` and patch-style ``nn.Conv2d``."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            names.append(name)
    return names


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class QuantDenoiser(nn.Module):
    """A quantized copy of a denoiser; the step index comes from ``step`` or the timestep schedule.

    ``timesteps`` is the sampler's schedule (e.g. ``[1, .75, .5, .25]``): a call with timestep
    ``t`` uses the ranges of the schedule step nearest to ``t``, so the object is a drop-in
    denoiser for :func:`banana.compiler.zoo.sample`. ``static=True`` calibrations carry a single
    range (``steps=1``) used at every step.
    """

    def __init__(self, model: nn.Module, plan: dict[str, LayerPrecision],
                 act_ranges: dict[str, tuple[np.ndarray, np.ndarray]], timesteps: np.ndarray,
                 weight_scales: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        self.ctx = StepContext()
        self.register_buffer("timesteps", torch.as_tensor(np.asarray(timesteps, np.float32)), persistent=False)
        tables = {len(v[0]) for v in act_ranges.values()}
        self.range_steps = tables.pop() if len(tables) == 1 else len(timesteps)
        if tables:
            raise BadConfigError("activation range tables have different step counts")
        known = set(quantizable_layers(self.model))
        unknown = sorted(set(plan) - known)
        if unknown:
            raise BadConfigError(f"plan names layers the model does not have: {', '.join(unknown[:5])}")
        self.plan = dict(plan)
        for name in quantizable_layers(self.model):
            prec = plan.get(name, LayerPrecision("fp32", "fp32"))
            inner = self.model.get_submodule(name)
            ws = (weight_scales or {}).get(name)
            _set_module(self.model, name, QuantLayer(inner, prec, self.ctx, act_ranges.get(name),
                                                     self.range_steps, ws))

    def layers(self) -> dict[str, QuantLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantLayer)}

    def model_float(self) -> nn.Module:
        """The wrapped model with plain layers again (DQAT-trained weights, no fake quantization)."""
        plain = copy.deepcopy(self.model)
        for name, mod in list(plain.named_modules()):
            if isinstance(mod, QuantLayer):
                _set_module(plain, name, mod.inner)
        return plain.eval()

    def step_of(self, timestep: torch.Tensor) -> torch.Tensor:
        """Index of the nearest schedule step for each row (0 for single-range models)."""
        if self.range_steps == 1:
            return torch.zeros(timestep.shape[0], dtype=torch.long)
        return torch.argmin((timestep[:, None] - self.timesteps[None]).abs(), dim=1)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                step: torch.Tensor | None = None) -> torch.Tensor:
        self.ctx.step = self.step_of(timestep) if step is None else step.long()
        try:
            return self.model(latent, timestep, text)
        finally:
            self.ctx.step = None
