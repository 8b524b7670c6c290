"""The pipeline's "fuse" stage: which rewrites run for which backend, in one place.

Backends whose code generator can run banana's fused attention schedule get the rewrite; the
others keep TVM's unfused lowering (their sites are still recorded, with the reason), so adding
a backend's schedule is one entry in :data:`ATTENTION_BACKENDS`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from banana.compiler.passes.attention import (
    AttentionFusion,
    KernelFactory,
    SkippedSite,
    cpu_kernel,
    fuse_attention,
    gpu_kernel,
    hexagon_kernel,
)
from banana.kernels.attention import AttentionKnobs, AttentionSpec

logger = logging.getLogger(__name__)

# Backend -> the fused-attention kernel schedule it builds. Hexagon's is the LLVM kernel on one
# thread (HVX vectors); it compiles and is inspected but cannot execute on this machine.
ATTENTION_BACKENDS: dict[str, KernelFactory] = {
    "host": cpu_kernel, "cpu": cpu_kernel, "adreno": gpu_kernel, "hexagon": hexagon_kernel,
}


def fuse_stage(mod: Any, backend: str, target: dict[str, Any],
               params: dict[str, np.ndarray] | None = None,
               knobs: dict[str, AttentionKnobs] | None = None) -> AttentionFusion:
    """Run the fusion passes that ``backend`` supports; returns the module and site records.

    ``params`` (weight name -> value) lets the matcher read constant masks stored as weights.
    ``knobs`` (``banana.tuning.knobs.spec_key`` -> knobs, from ``banana tune``) replace the default
    knobs of the CPU kernels they name; kernels not named keep the defaults.
    """
    num_cores = int(target.get("num-cores", 1)) if isinstance(target, dict) else 1
    if knobs and ATTENTION_BACKENDS.get(backend) is cpu_kernel:
        from banana.tuning.knobs import spec_key

        def tuned(spec: AttentionSpec, cores: int) -> tuple[Any, dict[str, int]]:
            return cpu_kernel(spec, cores, knobs.get(spec_key(spec)))

        return fuse_attention(mod, num_cores=num_cores, kernel=tuned, params=params)
    if backend in ATTENTION_BACKENDS:
        return fuse_attention(mod, num_cores=num_cores, kernel=ATTENTION_BACKENDS[backend], params=params)
    fusion = fuse_attention(mod, num_cores=num_cores, params=params)
    reason = f"no fused-attention schedule for backend '{backend}' yet (TVM's unfused lowering used)"
    for site in fusion.sites:
        logger.warning("attention site '%s' left unfused: %s", site.name, reason)
    skipped = [SkippedSite(site.name, reason) for site in fusion.sites] + fusion.skipped
    return AttentionFusion(mod=mod, sites=[], skipped=skipped)
