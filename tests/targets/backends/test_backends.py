"""Each backend through the one pipeline, on the small MLP: what each can prove here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banana.compiler.errors import BadConfigError
from banana.compiler.pipeline import compile_model
from banana.targets.backends import backend_names, get_backend
from banana.targets.hexagon import hvx_instruction_stats


def test_registry_names_and_unknown_backend() -> None:
    assert backend_names() == ["host", "cpu", "adreno", "hexagon"]
    with pytest.raises(BadConfigError, match="unknown backend 'npu'"):
        get_backend("npu")


def test_cpu_backend_runs_under_qemu(mlp_onnx: Path, tmp_path: Path) -> None:
    result = compile_model(mlp_onnx, backend="cpu", soc="SM8650", out=tmp_path / "a", verify=True)
    manifest = result.manifest
    assert manifest["target"]["mtriple"] == "aarch64-linux-gnu"
    assert "+i8mm" in manifest["target"]["mattr"] and "+sve" not in manifest["target"]["mattr"]
    assert manifest["run"]["executor"] == "qemu-aarch64"
    assert (tmp_path / "a" / "model.so").read_bytes()[18] == 183  # e_machine EM_AARCH64
    assert result.verify is not None and result.verify.executed and result.verify.ok


def test_adreno_backend_runs_kernels_on_pocl(mlp_onnx: Path, tmp_path: Path) -> None:
    result = compile_model(mlp_onnx, backend="adreno", soc="SM8650", out=tmp_path / "a", verify=True)
    out = tmp_path / "a"
    assert "__kernel" in (out / "kernels.cl").read_text()
    assert json.loads((out / "launch_plan.json").read_text())["steps"]
    assert result.manifest["target"]["kind"] == "opencl"
    assert result.manifest["build"]["schedule_rules"].get("Matmul", 0) >= 1
    assert result.verify is not None and result.verify.executed and result.verify.ok


def test_hexagon_backend_emits_hvx(mlp_onnx: Path, tmp_path: Path) -> None:
    result = compile_model(mlp_onnx, backend="hexagon", soc="SM8550", out=tmp_path / "a", verify=True)
    out = tmp_path / "a"
    assert result.manifest["target"]["mcpu"] == "hexagonv73"
    stats = hvx_instruction_stats((out / "kernels.s").read_text())
    assert stats["hvx_total"] > 0 and stats["hvx_loads"] > 0
    assert (out / "model.so").read_bytes()[18] == 164  # e_machine EM_QDSP6
    assert result.verify is not None and not result.verify.executed


def test_host_backend_ignores_soc_and_describes_this_machine(mlp_onnx: Path, tmp_path: Path) -> None:
    result = compile_model(mlp_onnx, backend="host", soc="SM8650", out=tmp_path / "a")
    assert result.manifest["soc"]["id"] == "host"
