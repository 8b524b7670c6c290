"""torch modules enter through banana's exporter and verify against onnxruntime on that export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from banana.compiler.frontend import import_torch
from banana.compiler.pipeline import compile_model


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.norm(self.proj(x)))


def _inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)}


def test_import_torch_gives_relax_with_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = import_torch(_Tiny().eval(), _inputs(), tmp_path)
    assert [s.name for s in model.inputs] == ["x"]
    assert model.outputs[0].shape == (2, 4, 16)
    assert model.weight_bytes >= (8 * 16 + 16 + 16 + 16) * 4


def test_compile_torch_module_and_verify(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BANANA_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    module = _Tiny().eval()
    result = compile_model(module, example_inputs=_inputs(), backend="host", out=tmp_path / "a", verify=True)
    assert result.verify is not None and result.verify.ok
    exported = Path(result.manifest["model"]["path"])
    assert exported.is_file() and exported.is_relative_to(tmp_path / "cache")
    with torch.no_grad():
        expected = module(torch.from_numpy(_inputs()["x"])).numpy()
    from banana.compiler.artifact import Artifact
    from banana.targets.backends import get_backend

    ours = get_backend("host").run(Artifact.open(tmp_path / "a"), [_inputs()["x"]])[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
