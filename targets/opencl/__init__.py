"""banana's Adreno backend: Relax -> dlight-scheduled OpenCL kernels + a launch plan.

Pipeline: :func:`adreno_target` -> :func:`lower_for_opencl` -> :func:`extract_launch_plan`
(kernels.cl + launch_plan.json, the verified artifact) -> :func:`run_on_pocl` to check it on
PoCL. :func:`build_adreno_library` additionally exports TVM's arm64 host library.
"""

from .extract import extract_launch_plan
from .library import build_adreno_library
from .lowering import default_gpu_rules, lower_for_opencl, schedule_rules_used
from .plan import (
    PLAN_FORMAT_VERSION,
    Kernel,
    KernelArg,
    KernelParam,
    LaunchPlan,
    LaunchStep,
    PlanBuffer,
    validate_plan_json,
)
from .pocl import KernelTiming, PoclRun, profile_on_pocl, run_on_pocl
from .target import adreno_target

__all__ = [
    "PLAN_FORMAT_VERSION",
    "Kernel",
    "KernelArg",
    "KernelParam",
    "KernelTiming",
    "LaunchPlan",
    "LaunchStep",
    "PlanBuffer",
    "PoclRun",
    "adreno_target",
    "build_adreno_library",
    "default_gpu_rules",
    "extract_launch_plan",
    "lower_for_opencl",
    "profile_on_pocl",
    "run_on_pocl",
    "schedule_rules_used",
    "validate_plan_json",
]
