"""The Adreno GPU via OpenCL: kernels scheduled with dlight's GPU rules, verified on PoCL.

The TVM wheel has no OpenCL runtime, so the artifact also carries the kernels' source and an
explicit launch plan; banana executes that plan on PoCL's CPU device to verify the kernels
themselves, and a phone team can read exactly which kernels run with which work sizes.

Quantized models run their layers through ``wo_gemm_adreno`` (banana.compiler.passes.integer_adreno);
the build facts name the kernel variant (``fp32``, ``fp16``, ``fp16-acc32``) and whether PoCL can run
it: PoCL here has no ``cl_khr_fp16``, so :meth:`AdrenoBackend.run` refuses half-precision builds with
an error saying so instead of a compiler error from deep inside PoCL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.errors import ToolchainError
from banana.compiler.frontend.importer import ImportedModel
from banana.targets.backends.base import BuildOutput
from banana.targets.soc import Soc

LIBRARY = "model.so"
WO_FACTS = "wo_gemm_adreno"  # build facts key: the weight-only kernels' variant


def weight_only_facts(lowered: Any) -> dict[str, Any] | None:
    """Variant and count of the ``wo_gemm_adreno`` kernels in a lowered module (None if it has none)."""
    from tvm import tirx

    from banana.compiler.passes.integer_adreno import VARIANT_ATTR, WO_VARIANTS

    names = [str(f.attrs[VARIANT_ATTR]) for _, f in lowered.functions_items()
             if isinstance(f, tirx.PrimFunc) and f.attrs is not None and VARIANT_ATTR in f.attrs]
    if not names:
        return None
    if len(set(names)) > 1:
        raise ToolchainError(f"weight-only kernels of several variants in one build: {sorted(set(names))}")
    return {**WO_VARIANTS[names[0]].to_json(), "kernels": len(names)}


class AdrenoBackend:
    name = "adreno"
    description = "Adreno GPU (OpenCL C, dlight GPU schedules), verified on PoCL"

    def target(self, soc: Soc) -> dict[str, Any]:
        from banana.targets.opencl import adreno_target

        return adreno_target(host_mattr=list(soc.cpu_mattr))

    def build(self, model: ImportedModel, soc: Soc, out_dir: Path) -> BuildOutput:
        from banana.targets.opencl import (
            build_adreno_library,
            extract_launch_plan,
            lower_for_opencl,
            schedule_rules_used,
        )

        target = self.target(soc)
        lowered = lower_for_opencl(model.mod, target)
        plan = extract_launch_plan(lowered, target)
        plan.save(out_dir)
        build_adreno_library(lowered, target, out_dir / LIBRARY)
        rules: dict[str, int] = {}
        for rule in schedule_rules_used(lowered).values():
            rules[rule] = rules.get(rule, 0) + 1
        facts: dict[str, Any] = {
            "opencl_kernels": len(plan.kernels),
            "kernel_launches": len(plan.steps),
            "schedule_rules": rules,
            "kernel_source": "kernels.cl",
            "launch_plan": "launch_plan.json",
        }
        wo = weight_only_facts(lowered)
        if wo is not None:
            facts[WO_FACTS] = wo
        return BuildOutput(target=target, library=LIBRARY, executor="pocl", facts=facts)

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        from banana.targets.opencl import LaunchPlan, run_on_pocl

        wo = artifact.manifest.get("build", {}).get(WO_FACTS)
        if wo is not None and not wo.get("runs_on_pocl", True):
            raise ToolchainError(
                f"this artifact's weight-only kernels are the {wo['variant']!r} variant (half precision); PoCL has "
                "no cl_khr_fp16, so it cannot run here: build the 'fp32' variant to verify on PoCL, or run it on an "
                "Adreno")
        plan = LaunchPlan.load(artifact.directory)
        return run_on_pocl(plan, list(inputs), artifact.load_weights())
