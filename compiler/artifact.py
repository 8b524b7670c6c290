"""The artifact directory: compiled library, weights and a schema-checked manifest.

Written through a staging directory beside the destination and renamed into place at the end,
so a failure at any stage leaves nothing behind; read back only after every file's checksum
matches the manifest, so a tampered or truncated artifact never runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.errors import ArtifactError, BananaError
from banana.compiler.frontend.importer import TensorSpec
from banana.compiler.frontend.onnx_loading import sha256_file
from banana.compiler.schemas import validation_errors

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "weights.params"


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty staging dir; on success it replaces ``out``, on failure it vanishes."""
    out = Path(out).absolute()
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def save_weights(weights: Sequence[np.ndarray], path: Path) -> int:
    """TVM's param-dict format: readable by the C++ runtime on the phone (runtime.LoadParams)."""
    import tvm

    blob = tvm.runtime.save_param_dict({f"p{i}": tvm.runtime.tensor(np.require(w, requirements="C"))
                                        for i, w in enumerate(weights)})
    path.write_bytes(blob)
    return len(blob)


def load_param_file(path: Path) -> list[np.ndarray]:
    import tvm

    loaded = tvm.runtime.load_param_dict(path.read_bytes())
    return [loaded[f"p{i}"].numpy() for i in range(len(loaded))]


def finalize_manifest(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add sha256 of every staged file, validate against the schema, write manifest.json."""
    files = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(staging).as_posix()
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {**manifest, "files": files}
    problems = validation_errors(manifest, "manifest")
    if problems:  # our own bug, but never ship an artifact we could not read back
        raise BananaError(f"internal: manifest fails its schema: {problems[0]}")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def shipped_bytes(manifest: dict[str, Any]) -> dict[str, int]:
    """Bytes of what an app ships and loads -- the compiled library and the weights file -- and their sum.

    The manifest, reports and anything else in the directory are build metadata: an app build
    turns the manifest into code, it does not load it. Size budgets (issue 5) count ``total``.
    """
    by_path = {f["path"]: int(f["bytes"]) for f in manifest["files"]}
    library = manifest["entry"].get("library")
    out = {"library": by_path[library] if library else 0, "weights": by_path[manifest["weights"]["file"]]}
    out["total"] = out["library"] + out["weights"]
    return out


@dataclass(frozen=True)
class Artifact:
    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, directory: Path | str) -> Artifact:
        """Read and check an artifact: schema first, then every file's size and sha256."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: not an artifact directory")
        if not manifest_path.is_file():
            raise ArtifactError(f"{manifest_path}: missing (not a banana artifact?)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from None
        problems = validation_errors(manifest, "manifest")
        if problems:
            raise ArtifactError(f"{manifest_path}: invalid manifest: {problems[0]}")
        for entry in manifest["files"]:
            path = (directory / entry["path"]).resolve()
            if not path.is_relative_to(directory.resolve()):
                raise ArtifactError(f"{manifest_path}: file entry '{entry['path']}' escapes the artifact")
            if not path.is_file():
                raise ArtifactError(f"{directory / entry['path']}: listed in the manifest but missing")
            if path.stat().st_size != entry["bytes"]:
                raise ArtifactError(
                    f"{directory / entry['path']}: size {path.stat().st_size} B, manifest says {entry['bytes']} B"
                )
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ArtifactError(
                    f"{directory / entry['path']}: sha256 mismatch (manifest {entry['sha256'][:12]}…, "
                    f"file {digest[:12]}…)"
                )
        return cls(directory, manifest)

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in self.manifest["outputs"]]

    def load_weights(self) -> list[np.ndarray]:
        return load_param_file(self.path(self.manifest["weights"]["file"]))
