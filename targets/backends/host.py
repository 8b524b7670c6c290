"""This x86 machine: the one place latency is measured, and the in-process reference build."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.frontend.importer import ImportedModel
from banana.compiler.lowering import compile_llvm
from banana.targets.backends.base import BuildOutput
from banana.targets.soc import Soc

LIBRARY = "model.so"


class HostBackend:
    name = "host"
    description = "this machine's CPU (LLVM, in-process): measurement and reference"

    def target(self, soc: Soc) -> dict[str, Any]:
        from banana.targets.host import host_target

        return host_target()

    def build(self, model: ImportedModel, soc: Soc, out_dir: Path) -> BuildOutput:
        target = self.target(soc)
        executable = compile_llvm(model.mod, target)
        executable.export_library(str(out_dir / LIBRARY))
        return BuildOutput(target=target, library=LIBRARY, executor="in-process")

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return run_in_process(artifact, inputs)


def run_in_process(artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    library = artifact.path(artifact.manifest["entry"]["library"])
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    # np.require keeps 0-d inputs 0-d (np.ascontiguousarray would make them 1-d).
    args = [tvm.runtime.tensor(np.require(a, requirements="C")) for a in [*inputs, *artifact.load_weights()]]
    result = vm[artifact.manifest["entry"]["function"]](*args)
    return flatten_outputs(result)


def flatten_outputs(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    flat: list[np.ndarray] = []
    for item in result:
        flat.extend(flatten_outputs(item))
    return flat
