"""The Adreno GPU via OpenCL: kernels scheduled with dlight's GPU rules, verified on PoCL.

The TVM wheel has no OpenCL runtime, so the artifact also carries the kernels' source and an
explicit launch plan; banana executes that plan on PoCL's CPU device to verify the kernels
themselves, and a phone team can read exactly which kernels run with which work sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.frontend.importer import ImportedModel
from banana.targets.backends.base import BuildOutput
from banana.targets.soc import Soc

LIBRARY = "model.so"


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
        facts = {
            "opencl_kernels": len(plan.kernels),
            "kernel_launches": len(plan.steps),
            "schedule_rules": rules,
            "kernel_source": "kernels.cl",
            "launch_plan": "launch_plan.json",
        }
        return BuildOutput(target=target, library=LIBRARY, executor="pocl", facts=facts)

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        from banana.targets.opencl import LaunchPlan, run_on_pocl

        plan = LaunchPlan.load(artifact.directory)
        return run_on_pocl(plan, list(inputs), artifact.load_weights())
