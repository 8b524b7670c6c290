"""The TVM target dict for Adreno GPUs driven through OpenCL, with an arm64 host.

The device attributes are TVM 0.27's own ``opencl -device=adreno`` preset (what
``tvm.target.Target({"kind": "opencl", "device": "adreno"})`` fills in): 256 work-items per
work-group, 16 KiB of local memory per work-group, ``thread_warp_size`` 1. They are deliberately
below what Adreno 7xx drivers report (1024 work-items, 32 KiB local memory in public ``clinfo``
dumps; unverified), because Adreno trades registers per fibre against occupancy and TVM's
dlight GPU rules size tiles from these numbers. ``thread_warp_size`` stays 1: TVM's OpenCL
codegen has no sub-group shuffles, so cross-thread reductions must go through local memory.
Callers can still override any attribute through ``**opts``.
"""

from __future__ import annotations

import copy
from typing import Any

import tvm

from banana.compiler.errors import BadConfigError

# Snapdragon 8 Gen 2 / 8 Gen 3 / 8 Elite CPUs all report dotprod, i8mm and fp16 (see
# /work/shared/data/socs.md); the host side here only launches kernels, so this barely matters.
DEFAULT_HOST_MATTR: tuple[str, ...] = ("+neon", "+dotprod", "+i8mm", "+fullfp16")

ADRENO_DEVICE_DEFAULTS: dict[str, Any] = {
    "max_threads_per_block": 256,
    "max_num_threads": 256,
    "max_shared_memory_per_block": 16384,
    "thread_warp_size": 1,
}


def _opencl_options() -> dict[str, str]:
    list_options = tvm.get_global_func("target.ListTargetKindOptionsFromName")
    return {str(k): str(v) for k, v in list_options("opencl").items()}


def adreno_target(host_mattr: list[str] | None = None, **opts: Any) -> dict:
    """Return a JSON-able TVM target dict for an Adreno GPU with an aarch64 LLVM host.

    ``opts`` overrides OpenCL target attributes (e.g. ``max_threads_per_block=128``); unknown
    names are rejected here rather than deep inside TVM.
    """
    known = _opencl_options()
    for name in opts:
        if name in ("kind", "host", "keys", "tag") or name not in known:
            raise BadConfigError(f"adreno_target: unknown OpenCL target option {name!r}")
    target: dict[str, Any] = {"kind": "opencl", "device": "adreno"}
    target.update(copy.deepcopy(ADRENO_DEVICE_DEFAULTS))
    target.update(opts)
    target["host"] = {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mattr": list(DEFAULT_HOST_MATTR if host_mattr is None else host_mattr),
    }
    try:
        tvm.target.Target(target)
    except Exception as err:  # TVM raises its own error types for bad attribute values
        raise BadConfigError(f"adreno_target: TVM rejects the target: {str(err).splitlines()[0]}") from err
    return target


def as_tvm_target(target: dict | tvm.target.Target) -> tvm.target.Target:
    """Turn a target dict into a ``tvm.target.Target`` and insist it is an OpenCL one."""
    try:
        tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    except Exception as err:
        raise BadConfigError(f"target: TVM rejects it: {str(err).splitlines()[0]}") from err
    if tgt.kind.name != "opencl":
        raise BadConfigError(f"target: kind is {tgt.kind.name!r}, the OpenCL backend needs 'opencl'")
    if tgt.host is None:
        raise BadConfigError("target: an OpenCL target needs a 'host' (e.g. aarch64 llvm)")
    return tgt
