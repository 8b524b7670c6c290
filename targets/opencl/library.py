"""The arm64 host library for Adreno: what an app with an OpenCL-enabled TVM runtime loads.

Measured with TVM 0.27's wheel (USE_OPENCL=OFF): ``tvm.compile`` still runs the OpenCL codegen
and wraps the kernels in a source-only device module of type ``opencl``; ``export_library``
serialises it into the .so next to the aarch64 host code, so export works without an OpenCL
runtime. Loading needs a TVM runtime built with OpenCL (e.g. the app's NDK build); the x86 wheel
here cannot load or run it, which is why the launch plan (kernels.cl + launch_plan.json) is what
banana verifies.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import tvm
from tvm import relax
from tvm.ir import IRModule

from banana.compiler.errors import ToolchainError

from .lowering import lower_for_opencl
from .target import as_tvm_target

log = logging.getLogger(__name__)

CROSS_CXX = "aarch64-linux-gnu-g++"


def _finish_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Relax passes after scheduling: TVM's generic-GPU dataflow lowering and VM finalization."""
    gpu = relax.backend.gpu_generic

    @tvm.transform.module_pass(opt_level=0, name="BananaOpenCLFinish")
    def _finish(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        with target:
            return tvm.transform.Sequential(gpu.dataflow_lower_passes(target) + gpu.finalize_passes(target))(mod)

    return _finish


def build_adreno_library(mod: IRModule, target: dict, path: str | os.PathLike[str]) -> Path:
    """Compile ``mod`` (lowered or not) and export an aarch64 shared library to ``path``."""
    tgt = as_tvm_target(target)
    cxx = shutil.which(CROSS_CXX)
    if cxx is None:
        raise ToolchainError(f"{CROSS_CXX} not found on PATH; install g++-aarch64-linux-gnu")
    lowered = mod
    if any(
        isinstance(f, tvm.tirx.PrimFunc) and not bool(f.attrs.get("tirx.is_scheduled", False))
        for _, f in mod.functions_items()
    ) or not any(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions_items()):
        lowered = lower_for_opencl(mod, target)
    try:
        executable = tvm.compile(lowered, tgt, relax_pipeline=_finish_pipeline(tgt))
    except (RuntimeError, ValueError) as err:  # TVM 0.27 raises these (tvm.error has no TVMError)
        raise ToolchainError(f"tvm.compile for {tgt.kind.name}/adreno failed: {str(err).splitlines()[-1]}") from err
    kinds = [m.kind for m in executable.mod.imports for m in [m, *m.imports]]
    if "opencl" not in kinds:
        raise ToolchainError(f"tvm.compile produced no OpenCL device module (modules: {kinds})")

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    from tvm.support import cc

    with tempfile.TemporaryDirectory(prefix=".banana-adreno-", dir=dest.parent) as tmp:
        tmp_lib = Path(tmp) / dest.name
        try:
            executable.export_library(str(tmp_lib), fcompile=cc.cross_compiler(cxx))
        except Exception as err:  # export failures come from TVM or the compiler subprocess
            msg = str(err).strip().splitlines()
            raise ToolchainError(f"{dest}: export_library with {CROSS_CXX} failed: {msg[-1] if msg else err}") from err
        os.replace(tmp_lib, dest)
    log.info("wrote %s (%d bytes)", dest, dest.stat().st_size)
    return dest
