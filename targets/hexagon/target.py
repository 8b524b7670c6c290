"""The Hexagon target dict: TVM's own ``qcom/hexagon-vXX`` tag attributes, with the host set to itself.

Why host == device: banana runs the whole Relax VM executable on the DSP (no ARM-side host code), so the
VM's host functions must be compiled for Hexagon too. TVM's tags leave ``host`` unset, which makes
``tvm.compile`` fall back to an x86 ``llvm`` host.
"""

from __future__ import annotations

from typing import Any

import tvm

from banana.compiler.errors import BadConfigError

# Mirrors tvm/backend/hexagon/target_tags.py (TVM 0.27): arch -> tag; v79 has no TVM tag.
_TAGGED_ARCHS = ("v65", "v66", "v68", "v69", "v73", "v75")


def hexagon_target(arch: str = "v73", vtcm_bytes: int = 8 * 2**20, hvx_contexts: int = 4) -> dict[str, Any]:
    """Return a complete TVM target dict for Hexagon ``arch`` with HVX in 128-byte mode.

    Attributes (mattr, llvm-options) are read from TVM's registered tag so they follow TVM's view of
    each architecture (qfloat HVX on v68+); VTCM size and HVX context count are the caller's SoC facts.
    """
    arch = arch.lower().removeprefix("hexagon").removeprefix("qcom/hexagon-")
    if arch not in _TAGGED_ARCHS:
        raise BadConfigError(f"hexagon arch {arch!r}: TVM 0.27 has tags only for {', '.join(_TAGGED_ARCHS)}")
    if vtcm_bytes <= 0 or hvx_contexts <= 0:
        raise BadConfigError(f"hexagon target: vtcm_bytes={vtcm_bytes} and hvx_contexts={hvx_contexts} must be > 0")
    tag = tvm.target.Target(f"qcom/hexagon-{arch}").export()
    device: dict[str, Any] = {
        "kind": "hexagon",
        "mtriple": str(tag["mtriple"]),
        "mcpu": str(tag["mcpu"]),
        "mattr": [str(a) for a in tag["mattr"]],
        "vtcm-capacity": int(vtcm_bytes),
        "num-cores": int(hvx_contexts),
    }
    if "llvm-options" in tag:
        device["llvm-options"] = [str(o) for o in tag["llvm-options"]]
    return {**device, "host": dict(device)}
