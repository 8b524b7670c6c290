"""This x86 machine: the one place latency is measured, and the in-process reference build.

Also the home of the *lean build* both LLVM CPU backends (this one and ``cpu``) ship: what makes
the compiled library small without making it slower or less safe (measured on the int8 nano DiT,
whose weights are only ~1.2 MB, so the library decided the artifact's size):

* LLVM ``-O2`` (target attr ``opt-level``) instead of TVM's default ``-O3``: O3's loop unroller
  fully unrolled the elementwise/quantize kernels (one GELU+quantize kernel was 65 KB of straight
  AVX2 code); O2 keeps them loops and was no slower. ``.text`` 910 KB -> 276 KB.
* No per-kernel argument asserts (``tirx.disable_assert``): every kernel's packed-function
  wrapper re-checked each argument's type, ndim, shape, dtype and device with its own formatted
  error message -- two thirds of the remaining code (276 KB -> 90 KB). Those checks are
  redundant once the VM checks every tensor that enters ``main``: kernels are only ever called by
  the VM with tensors it allocated from static shapes. The VM checks the model inputs by itself;
  weights it skipped (params after ``num_input`` count as trusted), so the lean build drops that
  attribute and the VM checks every weight's dtype and shape too -- a wrong weights file still
  fails with the parameter's name. What keeps that check cheap (it was ~60 KB on the int8 nano
  DiT's 211 weights): short error strings (``main param[14] banana_int_0_w:`` instead of the
  full annotation, :mod:`banana.compiler.passes.vm_error_context`, ~100 B less per weight) and
  one packed epilogue parameter per integer layer instead of three
  (:class:`banana.compiler.passes.integer.EpilogueLayout`: 211 -> 114 weights).
* One copy of structurally equal kernels (:mod:`banana.compiler.passes.dedupe_kernels`; quantize
  scales are kernel arguments so the per-layer copies are equal): 64 -> 39 kernels on the int8
  nano DiT.
* Linked with ``-z noseparate-code`` (:data:`LINK_OPTIONS`): GNU ld otherwise pads the headers,
  code and read-only data to separate 4 KiB-aligned segments (~5 KB of zeros in the file).
* Stripped: no DWARF (TVM's LLVM codegen emits it: 60-390 KB) and no static symbol table. The
  dynamic symbol table the runtime's ``dlsym`` needs (``__tvm_ffi_*`` and the embedded VM
  executable ``__tvm_ffi__library_bin``) stays; loading is unchanged.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.errors import ToolchainError
from banana.compiler.frontend.importer import ImportedModel
from banana.compiler.lowering import compile_llvm
from banana.targets.backends.base import BuildOutput
from banana.targets.soc import Soc

if TYPE_CHECKING:
    import tvm

logger = logging.getLogger(__name__)

LIBRARY = "model.so"
#: LLVM optimisation level of shipped CPU code (TVM's default is 3); see the module docstring.
LLVM_OPT_LEVEL = 2
#: Linker flags of the host library: one read-only+code segment instead of three page-aligned ones
#: (``-z separate-code``, GNU ld's default on x86-64, pads each segment to 4 KiB in the file: ~5 KB).
LINK_OPTIONS = ("-Wl,-z,noseparate-code",)
#: The host's ``strip`` (binutils); the cpu backend uses the cross binutils' one.
HOST_STRIP = "strip"


class HostBackend:
    name = "host"
    description = "this machine's CPU (LLVM, in-process): measurement and reference"

    def target(self, soc: Soc) -> dict[str, Any]:
        from banana.targets.host import host_target

        return lean_target(host_target())

    def build(self, model: ImportedModel, soc: Soc, out_dir: Path) -> BuildOutput:
        target = self.target(soc)
        executable = compile_lean(model.mod, target)
        executable.export_library(str(out_dir / LIBRARY), options=list(LINK_OPTIONS))
        strip_library(out_dir / LIBRARY, HOST_STRIP)
        return BuildOutput(target=target, library=LIBRARY, executor="in-process")

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return run_in_process(artifact, inputs)


def lean_target(target: dict[str, Any]) -> dict[str, Any]:
    """``target`` at :data:`LLVM_OPT_LEVEL` (unless it sets its own): tuning measures what ships."""
    return {**target, "opt-level": target.get("opt-level", LLVM_OPT_LEVEL)}


def compile_lean(mod: tvm.IRModule, target: dict[str, Any]) -> tvm.runtime.Executable:
    """:func:`compile_llvm` without per-kernel argument asserts; the VM checks every parameter instead.

    ``mod`` is not modified. Other settings of the caller's PassContext are kept.
    """
    import tvm

    main = mod["main"]
    if main.attrs is not None and "num_input" in main.attrs:
        mod = mod.clone()
        mod["main"] = main.without_attr("num_input")  # the VM now checks weights as well as inputs
    outer = tvm.transform.PassContext.current()
    config = {**dict(outer.config), "tirx.disable_assert": True}
    with tvm.transform.PassContext(opt_level=outer.opt_level, required_pass=list(outer.required_pass),
                                   disabled_pass=list(outer.disabled_pass), instruments=list(outer.instruments),
                                   config=config):
        return compile_llvm(mod, target)


def strip_library(path: Path, strip: str) -> None:
    """Remove debug info and the static symbol table in place; the dynamic symbols TVM loads stay."""
    tool = shutil.which(strip)
    if tool is None:
        raise ToolchainError(f"{strip} not found on PATH: install binutils for this target")
    before = path.stat().st_size
    proc = subprocess.run([tool, "--strip-all", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ToolchainError(f"stripping {path.name} with {strip} failed: {last}")
    logger.info("stripped %s: %d -> %d bytes", path.name, before, path.stat().st_size)


def run_in_process(artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import tvm

    from banana.targets.host import host_vm

    library = artifact.path(artifact.manifest["entry"]["library"])
    vm = host_vm(tvm.runtime.load_module(str(library)))
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
