"""DQAT fine-tuning: LSQ step sizes + weights, per-step activation scales, distillation.

The student is a :class:`~.fakequant.QuantDenoiser` initialised from PTQ ranges; the teacher is
the float model. Training examples are the calibration trajectory itself -- every step's exact
sampler inputs -- so each step's activation table entry learns from the inputs it will see, and
the loss is the teacher's x0 at that step (final output) plus, optionally, every block's output
(intermediate distillation). Straight-through rounding and LSQ gradient scaling come from
:mod:`.fakequant`. Everything random (batch order, torch init) derives from ``seed``; training
runs on one thread, so a rerun gives bit-identical parameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.calibrate import Calibration
from banana.compiler.quantize.fakequant import QuantDenoiser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DQATConfig:
    iterations: int = 300
    batch: int = 32
    lr_weight: float = 1e-3  # relative to each weight tensor's std (Adam steps ignore gradient size)
    lr_scale: float = 5e-3  # relative to each step-size tensor's mean
    lr_zero_point: float = 1e-2  # integer units
    intermediate_weight: float = 0.1
    seed: int = 0
    log_every: int = 50


def _dataset(cal: Calibration, teacher: nn.Module) -> dict[str, torch.Tensor]:
    """Inputs, step index, teacher x0 and teacher block outputs (computed once) per example."""
    keys = ("latent", "timestep", "text")
    data = {k: torch.from_numpy(np.concatenate([cal.inputs[i][k] for i in range(cal.steps)])) for k in keys}
    n = len(cal.inputs[0]["timestep"])
    data["step"] = torch.arange(cal.steps).repeat_interleave(n)
    outs, hooks = _block_outputs(teacher)
    try:
        with torch.no_grad():
            data["target"] = teacher(*(data[k] for k in keys))
    finally:
        for h in hooks:
            h.remove()
    for i, o in enumerate(outs):
        data[f"block{i}"] = o
    return data


def _block_outputs(model: nn.Module) -> tuple[list[torch.Tensor], list]:
    outs: list[torch.Tensor] = []
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return outs, []
    hooks = [b.register_forward_hook(lambda _m, _a, o: outs.append(o)) for b in blocks]
    return outs, hooks


def train_dqat(student: QuantDenoiser, teacher: nn.Module, cal: Calibration, config: DQATConfig = DQATConfig(),
               on_progress: Callable[[str], None] | None = None) -> list[float]:
    """Fine-tune ``student`` in place; returns the loss every ``log_every`` iterations."""
    if config.iterations < 0 or config.batch < 1:
        raise BadConfigError(f"DQAT iterations={config.iterations}, batch={config.batch}; expected >= 0 and >= 1")
    if student.range_steps not in (1, cal.steps):
        raise BadConfigError(f"student has {student.range_steps} range steps; calibration has {cal.steps}")
    teacher = teacher.float().eval()
    data = _dataset(cal, teacher)
    n = len(data["step"])
    n_blocks = sum(1 for k in data if k.startswith("block"))
    rng = np.random.default_rng(config.seed)
    groups = []
    for name, p in student.named_parameters():
        if name.endswith("zero_point"):
            lr = config.lr_zero_point
        elif name.endswith("scale"):
            lr = config.lr_scale * float(p.detach().abs().mean())
        else:
            lr = config.lr_weight * float(p.detach().std()) if p.numel() > 1 else config.lr_weight * 1e-2
        groups.append({"params": [p], "lr": lr})
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        opt = torch.optim.Adam(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, config.iterations) / max(config.iterations, 1))))
        s_outs, s_hooks = _block_outputs(student.model)
        student.train()
        try:
            running = 0.0
            for it in range(config.iterations):
                idx = torch.from_numpy(rng.choice(n, size=min(config.batch, n), replace=False))
                lat, ts, txt = data["latent"][idx], data["timestep"][idx], data["text"][idx]
                step = data["step"][idx] if student.range_steps > 1 else torch.zeros_like(idx)
                s_outs.clear()
                out = student(lat, ts, txt, step=step)
                loss = nn.functional.mse_loss(out, data["target"][idx])
                if config.intermediate_weight and n_blocks:
                    t_outs = [data[f"block{i}"][idx] for i in range(n_blocks)]
                    inter = sum(nn.functional.mse_loss(s, t) / (t.pow(2).mean() + 1e-8)
                                for s, t in zip(s_outs, t_outs, strict=True))
                    loss = loss + config.intermediate_weight * inter / n_blocks
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach())
                if (it + 1) % config.log_every == 0 or it + 1 == config.iterations:
                    k = (it % config.log_every) + 1
                    losses.append(running / k)
                    running = 0.0
                    msg = f"dqat iteration {it + 1}/{config.iterations}: loss {losses[-1]:.3e}"
                    log.info(msg)
                    if on_progress:
                        on_progress(msg)
        finally:
            for h in s_hooks:
                h.remove()
            student.eval()
    return losses
