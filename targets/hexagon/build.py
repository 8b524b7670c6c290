"""Build a Relax module for Hexagon: a shared library (ld.lld, ELF machine QDSP6) plus its assembly.

Outputs in ``out_dir``: ``model.so`` (the Relax VM executable with the kernel library embedded, as
TVM's Hexagon runtime loads it; the whole VM runs on the DSP), ``kernels.so`` (the kernel library on
its own: the code TVM generated, handy for inspection and freestanding drivers) and ``kernels.s``.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm import relax
from tvm.relax.backend import cpu_generic

from banana.compiler.errors import ArtifactError, BadConfigError, ToolchainError
from banana.tuning.apply import apply_records_pass

from . import patches
from .asm import hvx_instruction_stats
from .schedule import hvx_vectorize

logger = logging.getLogger(__name__)

EM_QDSP6 = 164


@dataclass(frozen=True)
class HexagonBuild:
    """Paths and numbers of one Hexagon build."""

    so_path: Path
    kernels_so_path: Path
    asm_path: Path
    compile_seconds: float
    so_bytes: int
    hvx_stats: dict[str, int] = field(default_factory=dict)


def elf_machine(path: Path) -> int:
    """``e_machine`` of an ELF file (164 = QDSP6/Hexagon); raises ArtifactError if not an ELF."""
    head = Path(path).read_bytes()[:20]
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{path}: not an ELF file")
    endian = "<" if head[5] == 1 else ">"
    return struct.unpack(endian + "H", head[18:20])[0]


def hexagon_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Relax's CPU pipeline plus the HVX schedule right after fusion.

    Why not ``relax.get_default_pipeline``: it rejects kind ``hexagon``; the CPU pass lists work as is.
    """
    passes = (
        cpu_generic.library_dispatch_passes(target)
        + cpu_generic.legalize_passes(target)
        + [apply_records_pass(target)]  # `banana compile --tuning-db`: tuned tasks first
        + [hvx_vectorize]
        + relax.backend.cpu_generic.pipeline.dataflow_lower_passes(target)
        + cpu_generic.finalize_passes(target)
    )
    return tvm.transform.Sequential(passes, name="banana.HexagonPipeline")


@contextmanager
def _private_tmpdir(path: Path) -> Iterator[None]:
    """Point TMPDIR at ``path``: TVM's BuildHexagon leaves ``tvm-*.o``/``.so`` in the system temp dir."""
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old


def _lld_fcompile(output: str, objects: list[str], **_kwargs: Any) -> None:
    cmd = [patches.find_lld(), "-shared", "--export-dynamic", "-o", output, *objects]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
        raise ToolchainError(f"ld.lld failed linking {output}: {first}")


_lld_fcompile.object_format = "o"  # type: ignore[attr-defined]
_lld_fcompile.get_target_triple = lambda: "hexagon"  # type: ignore[attr-defined]


def _find_hexagon_module(mod: Any) -> Any:
    if mod.kind == "hexagon":
        return mod
    for child in mod.imports:
        found = _find_hexagon_module(child)
        if found is not None:
            return found
    return None


def build_hexagon(mod: tvm.IRModule, target: dict[str, Any], out_dir: Path) -> HexagonBuild:
    """Compile a Relax module (inputs first, then weights) for Hexagon into ``out_dir``."""
    if target.get("kind") != "hexagon":
        raise BadConfigError(f"build_hexagon: target kind {target.get('kind')!r}, expected 'hexagon'")
    patches.install_tvm_patches()
    tgt = tvm.target.Target(target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".hexagon-", dir=out_dir))
    try:
        scratch = staging / "tmp"
        scratch.mkdir()
        start = time.perf_counter()
        with _private_tmpdir(scratch):
            n_links = len(patches.link_log)
            with tgt:
                lowered = hexagon_pipeline(tgt)(mod)
            ex = tvm.compile(lowered, target=tgt, relax_pipeline=None)
            links = patches.link_log[n_links:]
            hex_mod = _find_hexagon_module(ex.mod)
            if hex_mod is None or not links:
                raise ToolchainError("build_hexagon: TVM produced no hexagon module (are the patches active?)")
            shutil.copyfile(links[-1][0], staging / "kernels.so")
            asm = hex_mod.inspect_source("s")
            (staging / "kernels.s").write_text(asm)
            ex.export_library(str(staging / "model.so"), fcompile=_lld_fcompile, workspace_dir=str(scratch))
        seconds = time.perf_counter() - start
        for name in ("model.so", "kernels.so"):
            machine = elf_machine(staging / name)
            if machine != EM_QDSP6:
                raise ArtifactError(f"{name}: ELF machine {machine}, expected {EM_QDSP6} (QDSP6)")
        for name in ("model.so", "kernels.so", "kernels.s"):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats = hvx_instruction_stats(asm)
    logger.info("hexagon build: %.2f s, %d HVX / %d scalar instructions", seconds,
                stats["hvx_total"], stats["scalar_total"])
    return HexagonBuild(
        so_path=out_dir / "model.so",
        kernels_so_path=out_dir / "kernels.so",
        asm_path=out_dir / "kernels.s",
        compile_seconds=seconds,
        so_bytes=(out_dir / "model.so").stat().st_size,
        hvx_stats=stats,
    )
