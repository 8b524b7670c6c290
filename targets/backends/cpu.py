"""The phone's ARM CPU: cross-compiled arm64 code, verified for real under qemu-aarch64.

Built lean like the host (``-O2``, no per-kernel argument asserts, the VM checking every
parameter, stripped with the cross binutils' ``strip``): see :mod:`banana.targets.backends.host`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.frontend.importer import ImportedModel
from banana.targets.backends.base import BuildOutput
from banana.targets.backends.host import compile_lean, lean_target, strip_library
from banana.targets.soc import Soc, cpu_target

LIBRARY = "model.so"
#: ships with the cross g++ (Debian binutils-aarch64-linux-gnu)
CROSS_STRIP = "aarch64-linux-gnu-strip"


class CpuBackend:
    name = "cpu"
    description = "arm64 CPU cores (LLVM with the SoC's ISA features), verified under qemu-aarch64"

    def target(self, soc: Soc) -> dict[str, Any]:
        return lean_target(cpu_target(soc))

    def build(self, model: ImportedModel, soc: Soc, out_dir: Path) -> BuildOutput:
        from banana.targets.arm64 import export_arm64_library, qemu_cpu_for_features

        target = self.target(soc)
        executable = compile_lean(model.mod, target)
        export_arm64_library(executable, out_dir / LIBRARY)
        strip_library(out_dir / LIBRARY, CROSS_STRIP)
        return BuildOutput(
            target=target,
            library=LIBRARY,
            executor="qemu-aarch64",
            run={"qemu_cpu": qemu_cpu_for_features(soc.cpu_features)},
        )

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        from banana.targets.arm64 import run_arm64

        result = run_arm64(
            artifact.path(artifact.manifest["entry"]["library"]),
            artifact.path(artifact.manifest["weights"]["file"]),
            list(inputs),
            qemu_cpu=artifact.manifest["run"]["qemu_cpu"],
        )
        return list(result.outputs)
