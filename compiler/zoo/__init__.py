"""Reference denoisers bundled with banana: a DiT (nano..1.8b), an SD-style UNet, a trained nano DiT.

They are the models every other stage is tested and benchmarked on, so they are built in
PyTorch with fixed seeds and exported by banana's own settings (:func:`export_onnx`). Tensor
conventions: ``latent [B,C,H,W]``, ``timestep [B]`` in ``[0, 1]`` (1 = noise), ``text [B,T,D]``;
ONNX inputs ``latent``/``timestep``/``text`` and output ``output``. The trained ``nano-dit``
works in pixel space (1x16x16 digits in ``[-1, 1]``) and predicts x0; condition it on digit
``k`` with :func:`class_condition` and sample with :func:`sample` / :func:`decode`.
"""

from banana.compiler.zoo.data import class_condition, load_digit_images
from banana.compiler.zoo.dit import DIT_CONFIGS, DiT, DiTConfig, count_params, dit_layer_shapes
from banana.compiler.zoo.export import INPUT_NAMES, OUTPUT_NAME, export_onnx
from banana.compiler.zoo.registry import (
    NANO_DIT_WEIGHTS,
    REFERENCE_MODELS,
    build_reference,
    example_inputs,
    reference_onnx,
)
from banana.compiler.zoo.sampler import consistency_timesteps, decode, sample, torch_denoiser
from banana.compiler.zoo.unet import UNET_CONFIGS, UNet, UNetConfig

__all__ = [
    "DIT_CONFIGS",
    "INPUT_NAMES",
    "NANO_DIT_WEIGHTS",
    "OUTPUT_NAME",
    "REFERENCE_MODELS",
    "UNET_CONFIGS",
    "DiT",
    "DiTConfig",
    "UNet",
    "UNetConfig",
    "build_reference",
    "class_condition",
    "consistency_timesteps",
    "count_params",
    "decode",
    "dit_layer_shapes",
    "example_inputs",
    "export_onnx",
    "load_digit_images",
    "reference_onnx",
    "sample",
    "torch_denoiser",
]
