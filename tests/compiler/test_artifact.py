from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from banana.compiler.artifact import (
    Artifact,
    finalize_manifest,
    load_param_file,
    save_weights,
    staged_directory,
)
from banana.compiler.errors import ArtifactError


def test_staged_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "artifact"
    with pytest.raises(RuntimeError), staged_directory(out) as staging:
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists()
    assert not (tmp_path / "deep").exists()


def test_staged_directory_replaces_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_directory(out) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_failed_replacement_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValueError), staged_directory(out):
        raise ValueError("build failed")
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_weights_round_trip_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) for s in [(3,), (4, 5), (2, 2, 2)]]
    path = tmp_path / "w.params"
    save_weights(weights, path)
    for original, loaded in zip(weights, load_param_file(path), strict=True):
        np.testing.assert_array_equal(original, loaded)


def _minimal_manifest() -> dict:
    return {
        "schema_version": 1,
        "banana_version": "0",
        "model": {"path": "/m.onnx", "sha256": "0" * 64, "format": "onnx", "opset": 18, "producer": "t"},
        "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1], "dtype": "float32"}],
        "soc": {"id": "host", "name": "host"},
        "backend": "host",
        "target": {"kind": "llvm"},
        "precision": "fp32",
        "entry": {"function": "main", "calling_convention": "inputs then weights", "library": "model.so"},
        "weights": {"file": "weights.params", "format": "tvm-param-dict", "count": 0, "bytes": 0, "names": []},
        "tools": {},
        "run": {"executor": "in-process"},
    }


def _artifact(tmp_path: Path) -> Path:
    out = tmp_path / "a"
    with staged_directory(out) as staging:
        (staging / "model.so").write_bytes(b"\x7fELF fake")
        save_weights([], staging / "weights.params")
        finalize_manifest(staging, _minimal_manifest())
    return out


def test_open_checks_every_checksum(tmp_path: Path) -> None:
    out = _artifact(tmp_path)
    assert Artifact.open(out).backend == "host"
    (out / "model.so").write_bytes(b"\x7fELF fakf")
    with pytest.raises(ArtifactError, match="model.so: sha256 mismatch"):
        Artifact.open(out)


def test_open_rejects_missing_file_and_bad_manifest(tmp_path: Path) -> None:
    out = _artifact(tmp_path)
    (out / "model.so").unlink()
    with pytest.raises(ArtifactError, match="model.so: listed in the manifest but missing"):
        Artifact.open(out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["soc"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="invalid manifest"):
        Artifact.open(out)


def test_manifest_entries_cannot_escape(tmp_path: Path) -> None:
    out = _artifact(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="escapes"):
        Artifact.open(out)
