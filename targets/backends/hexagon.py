"""The Hexagon DSP (HVX): code is generated and inspected here; it cannot run on this machine
(qemu-hexagon executes integer HVX only), so verification stops at checksums and assembly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.errors import BadConfigError, VerificationError
from banana.compiler.frontend.importer import ImportedModel
from banana.targets.backends.base import BuildOutput
from banana.targets.soc import Soc


class HexagonBackend:
    name = "hexagon"
    description = "Hexagon DSP with HVX vectors (LLVM hexagon), inspection only on this machine"

    def target(self, soc: Soc) -> dict[str, Any]:
        from banana.targets.hexagon import hexagon_target

        if soc.hexagon is None:
            raise BadConfigError(f"SoC {soc.id} has no Hexagon DSP in the registry")
        return hexagon_target(soc.hexagon.arch, soc.hexagon.vtcm_bytes, soc.hexagon.hvx_contexts)

    def build(self, model: ImportedModel, soc: Soc, out_dir: Path) -> BuildOutput:
        from banana.targets.hexagon import build_hexagon

        target = self.target(soc)
        result = build_hexagon(model.mod, target, out_dir)
        stats = result.hvx_stats
        facts = {
            "hvx_instructions": stats.get("hvx_total", 0),
            "scalar_instructions": stats.get("scalar_total", 0),
            "hvx_vector_loads": stats.get("hvx_loads", 0),
            "hvx_vector_stores": stats.get("hvx_stores", 0),
            "assembly": result.asm_path.name,
            "kernels_library": result.kernels_so_path.name,
        }
        return BuildOutput(target=target, library=result.so_path.name, executor="none", facts=facts)

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise VerificationError(
            "hexagon artifacts cannot execute on this machine (no DSP; qemu-hexagon lacks HVX float)"
        )
