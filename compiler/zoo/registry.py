"""Named reference denoisers: build, example inputs, and cached ONNX exports.

Names are the contract later issues use ("compile nano-dit for SM8650 and compare to
onnxruntime"); each maps to a builder that is deterministic for a seed, and ``nano-dit`` loads the
trained weights shipped in ``weights/nano_dit.safetensors``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from banana.compiler.errors import ArtifactError, BadConfigError
from banana.compiler.zoo.data import class_condition
from banana.compiler.zoo.dit import DIT_CONFIGS, DiT
from banana.compiler.zoo.export import METADATA_KEY, export_onnx, read_metadata, settings_key
from banana.compiler.zoo.unet import UNET_CONFIGS, UNet

log = logging.getLogger(__name__)

NANO_DIT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nano_dit.safetensors"


def _seeded(builder: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    # fork_rng keeps a caller's global torch RNG state untouched by our seeded init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


def _trained_nano_dit(seed: int) -> torch.nn.Module:
    if not NANO_DIT_WEIGHTS.is_file():
        raise ArtifactError(f"{NANO_DIT_WEIGHTS}: trained nano DiT weights are missing")
    with safe_open(str(NANO_DIT_WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("config") != "nano":
        raise ArtifactError(f"{NANO_DIT_WEIGHTS}: metadata config={meta.get('config')!r}; expected 'nano'")
    model = DiT(DIT_CONFIGS["nano"])
    try:
        model.load_state_dict(load_file(str(NANO_DIT_WEIGHTS)), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ArtifactError(f"{NANO_DIT_WEIGHTS}: weights do not match DiT(nano): {first}") from None
    return model


_BUILDERS: dict[str, Callable[[int], torch.nn.Module]] = {
    "nano-dit": _trained_nano_dit,
    "nano-dit-random": lambda seed: _seeded(lambda: DiT(DIT_CONFIGS["nano"]), seed),
    "nano-unet": lambda seed: _seeded(lambda: UNet(UNET_CONFIGS["nano"]), seed),
    "small-dit": lambda seed: _seeded(lambda: DiT(DIT_CONFIGS["small"]), seed),
}
_SHAPES = {  # name -> config whose latent/text fields give the input shapes
    "nano-dit": DIT_CONFIGS["nano"],
    "nano-dit-random": DIT_CONFIGS["nano"],
    "nano-unet": UNET_CONFIGS["nano"],
    "small-dit": DIT_CONFIGS["small"],
}
REFERENCE_MODELS: tuple[str, ...] = tuple(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise BadConfigError(f"unknown reference model {name!r}; known: {', '.join(REFERENCE_MODELS)}")


def build_reference(name: str, seed: int = 0) -> torch.nn.Module:
    """The named reference denoiser in eval mode (``seed`` is ignored for trained weights)."""
    _check_name(name)
    return _BUILDERS[name](seed).eval()


def example_inputs(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 ``latent``/``timestep``/``text`` for the named model.

    Nano DiT text tokens are real class conditions (classes 0, 1, ... over the batch) so the
    trained model sees in-distribution inputs; the others get unit-normal tokens.
    """
    _check_name(name)
    if batch < 1:
        raise BadConfigError(f"example_inputs batch={batch}; expected >= 1")
    c = _SHAPES[name]
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((batch, c.latent_channels, c.latent_size, c.latent_size), dtype=np.float32)
    timestep = rng.uniform(0.1, 0.9, batch).astype(np.float32)
    if name.startswith("nano-dit"):
        text = class_condition(np.arange(batch) % 10, c.text_tokens, c.text_dim)
    else:
        text = rng.standard_normal((batch, c.text_tokens, c.text_dim), dtype=np.float32)
    return {"latent": latent, "timestep": timestep, "text": np.ascontiguousarray(text, dtype=np.float32)}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_onnx(
    name: str,
    directory: str | os.PathLike[str],
    *,
    batch: int = 1,
    seed: int = 0,
    opset: int = 18,
    dynamo: bool = True,
    external_data: bool = False,
) -> Path:
    """Export the named model into ``directory`` once; later calls with equal settings reuse it.

    The file is ``<name>_<dynamo|torchscript>_opset<N>[_ext]_b<batch>.onnx``; its
    ``metadata_props[banana.zoo.key]`` hashes name, seed, batch, settings, torch version and (for
    trained models) the weights file, and a mismatch triggers a fresh export.
    """
    _check_name(name)
    directory = Path(directory)
    exporter = "dynamo" if dynamo else "torchscript"
    path = directory / f"{name}_{exporter}_opset{opset}{'_ext' if external_data else ''}_b{batch}.onnx"
    weights = _file_sha256(NANO_DIT_WEIGHTS) if name == "nano-dit" and NANO_DIT_WEIGHTS.is_file() else ""
    key = settings_key(name=name, seed=seed, batch=batch, opset=opset, dynamo=dynamo,
                       external_data=external_data, torch=torch.__version__, weights=weights)
    data = path.with_name(path.name + ".data")
    if path.is_file() and (not external_data or data.is_file()):
        try:
            if read_metadata(path).get(METADATA_KEY) == key:
                log.info("reusing %s", path)
                return path
        except Exception as e:  # unreadable/truncated file: re-export over it
            log.warning("%s: unreadable (%s); exporting again", path, e)
    model = build_reference(name, seed)
    return export_onnx(model, example_inputs(name, batch, seed), path, opset=opset, dynamo=dynamo,
                       external_data=external_data, metadata={METADATA_KEY: key, "banana.zoo.name": name})
