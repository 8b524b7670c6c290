"""Hexagon (HVX) backend: TVM target, TVM 0.27 patches, build to a QDSP6 shared library, asm stats."""

from .asm import hvx_instruction_stats
from .build import HexagonBuild, build_hexagon, elf_machine
from .patches import install_tvm_patches
from .target import hexagon_target

__all__ = [
    "HexagonBuild",
    "build_hexagon",
    "elf_machine",
    "hexagon_target",
    "hvx_instruction_stats",
    "install_tvm_patches",
]
