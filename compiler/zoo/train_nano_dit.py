"""Train the ``nano`` DiT on 16x16 digits so few-step samples are recognisable digits.

Objective: x0-prediction MSE under rectified-flow noising ``x_t = (1 - t) x0 + t eps`` with
``t`` mixing uniform draws and the sampler's own schedule points, which is what a 2-4 step
consistency-style sampler (:mod:`banana.compiler.zoo.sampler`) queries. The class label enters as
text tokens from :func:`banana.compiler.zoo.data.class_condition`. The shipped weights are an
EMA of the trained weights, in float32 safetensors with metadata (config, seed, steps, loss).

Runs single-threaded and is deterministic for a given ``--seed`` and number of steps: ``--steps``
fixes the step count (and the LR schedule), ``--seconds`` only caps wall-clock time.

    python -m banana.compiler.zoo.train_nano_dit --out weights.safetensors --seconds 240 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from banana.compiler.zoo.data import class_condition, load_digit_images
from banana.compiler.zoo.dit import DIT_CONFIGS, DiT
from banana.compiler.zoo.sampler import consistency_timesteps, decode, image_grid, sample

log = logging.getLogger(__name__)

CONFIG_NAME = "nano"


def _save_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the shipped file private
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def train(
    out: Path,
    *,
    seconds: float = 240.0,
    steps: int | None = None,
    seed: int = 0,
    batch: int = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.998,
) -> dict[str, str]:
    """Train, write ``out`` atomically and return the metadata stored in it."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = DIT_CONFIGS[CONFIG_NAME]
    model = DiT(cfg).zero_init_()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))

    images, labels = load_digit_images("train", cfg.latent_size)
    x_all = torch.from_numpy(images)
    text_all = torch.from_numpy(class_condition(np.arange(10), cfg.text_tokens, cfg.text_dim))
    sched = torch.from_numpy(np.concatenate([consistency_timesteps(n) for n in (2, 3, 4)]))
    max_steps = steps if steps is not None else 1_000_000
    warmup = 200
    start = time.monotonic()
    step, loss_avg = 0, float("nan")
    while step < max_steps and (steps is not None or time.monotonic() - start < seconds):
        idx = torch.from_numpy(rng.integers(0, len(x_all), batch))
        x0 = x_all[idx]
        # Random +-1 pixel shifts: cheap augmentation, keeps 1600 images from being memorised.
        dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
        x0 = torch.roll(x0, shifts=(dy, dx), dims=(2, 3))
        text = text_all[torch.from_numpy(labels[idx.numpy()])]
        t = torch.from_numpy(rng.uniform(0.0, 1.0, batch).astype(np.float32))
        on_sched = torch.from_numpy(rng.random(batch) < 0.5)
        t = torch.where(on_sched, sched[torch.from_numpy(rng.integers(0, len(sched), batch))], t)
        eps = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
        pred = model(xt, t, text)
        loss = torch.mean((pred - x0) ** 2)

        if steps is not None:  # cosine decay over a known horizon
            frac = min(1.0, step / max(1, steps))
            cur_lr = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        else:
            cur_lr = lr * min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - d)
        lv = float(loss.detach())
        loss_avg = lv if step == 0 else 0.98 * loss_avg + 0.02 * lv
        step += 1
        if step % 200 == 0:
            log.info("step %d loss %.4f (avg %.4f) %.0fs", step, lv, loss_avg, time.monotonic() - start)

    tensors = {k: v.detach().contiguous().clone() for k, v in ema.state_dict().items()}
    metadata = {
        "config": CONFIG_NAME,
        "seed": str(seed),
        "steps": str(step),
        "final_loss": f"{loss_avg:.6f}",
        "objective": "x0-prediction MSE, rectified flow x_t=(1-t)x0+t*eps, EMA weights",
        "train_seconds": f"{time.monotonic() - start:.1f}",
    }
    _save_atomic(tensors, metadata, Path(out))
    log.info("wrote %s: %s", out, metadata)
    return metadata


def write_sample_grid(model: torch.nn.Module, path: Path, *, seeds: tuple[int, ...] = (0, 1, 2, 3),
                      steps: int = 4, scale: int = 4) -> Path:
    """PNG of samples: one row per seed, one column per class (eyeballing that digits come out)."""
    from PIL import Image

    cfg = DIT_CONFIGS[CONFIG_NAME]
    cond = class_condition(np.arange(10), cfg.text_tokens, cfg.text_dim)
    shape = (10, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    rows = [decode(sample(model, steps=steps, seed=s, cond=cond, shape=shape)) for s in seeds]
    grid = image_grid(np.concatenate(rows), cols=10)[..., 0]
    grid = np.kron(grid, np.ones((scale, scale), dtype=np.uint8))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    Image.fromarray(grid, mode="L").save(tmp, format="PNG")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    ap.add_argument("--seconds", type=float, default=240.0, help="wall-clock cap (ignored with --steps)")
    ap.add_argument("--steps", type=int, default=None, help="exact step count (deterministic schedule)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--grid", type=Path, default=None, help="also write a PNG grid of 4-step samples")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.out, seconds=args.seconds, steps=args.steps, seed=args.seed, batch=args.batch, lr=args.lr)
    if args.grid is not None:
        model = DiT(DIT_CONFIGS[CONFIG_NAME])
        model.load_state_dict(load_file(str(args.out)))
        write_sample_grid(model.eval(), args.grid)


if __name__ == "__main__":
    main()
