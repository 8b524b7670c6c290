"""Models exported from other libraries (tiny configs, random weights) compile and verify.

transformers' Llama carries grouped-query attention (8 query / 2 key-value heads) in the
repeat_kv export pattern; diffusers' UNet2DConditionModel is the SD-style denoiser.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from banana.compiler.pipeline import compile_model


class _LlamaHidden(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
        self.model = LlamaModel(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).last_hidden_state


class _UNetSample(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        )

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, text, return_dict=False)[0]


def _export(module: torch.nn.Module, args: tuple, names: list[str], path: Path) -> Path:
    module.eval()
    torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"], dynamo=True,
                      opset_version=18, verbose=False)
    return path


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (1, 16))
    return _export(_LlamaHidden(), (ids,), ["input_ids"], tmp_path_factory.mktemp("llama") / "llama.onnx")


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    args = (torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 6, 32))
    names = ["sample", "timestep", "encoder_hidden_states"]
    return _export(_UNetSample(), args, names, tmp_path_factory.mktemp("unet") / "unet.onnx")


def test_llama_gqa_export_has_repeat_kv_pattern(llama_onnx: Path) -> None:
    import onnx

    ops = {node.op_type for node in onnx.load(str(llama_onnx)).graph.node}
    assert {"Expand", "Softmax", "MatMul"} <= ops


@pytest.mark.parametrize("backend", ["host", "cpu"])
def test_transformers_llama_gqa_verifies(llama_onnx: Path, tmp_path: Path, backend: str) -> None:
    result = compile_model(llama_onnx, backend=backend, soc="SM8650", out=tmp_path / "a", verify=True)
    assert result.verify is not None and result.verify.executed and result.verify.ok
    assert result.verify.comparisons[0].max_rel < 1e-4


@pytest.mark.parametrize("backend", ["host", "cpu"])
def test_diffusers_unet2dcondition_verifies(unet_onnx: Path, tmp_path: Path, backend: str) -> None:
    result = compile_model(unet_onnx, backend=backend, soc="SM8550", out=tmp_path / "a", verify=True)
    assert result.verify is not None and result.verify.executed and result.verify.ok
    assert result.verify.comparisons[0].max_rel < 1e-4
