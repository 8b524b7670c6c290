"""arm64 (Linux, glibc) execution path: cross-export TVM executables, run them under qemu.

Phones run Android, but the same AArch64 code runs under qemu-aarch64 with the arm64 TVM
runtime from PyPI's wheels, which lets the host verify outputs of the exact machine code that
will ship (see DESIGN.md field notes).
"""

from __future__ import annotations

from .qemu import KNOWN_FEATURES, qemu_cpu_for_features
from .run import Arm64RunResult, run_arm64
from .runtime import Arm64Runtime, default_cache_dir, ensure_runtime
from .toolchain import arm64_fcompile, export_arm64_library, is_aarch64_elf

__all__ = [
    "KNOWN_FEATURES",
    "Arm64RunResult",
    "Arm64Runtime",
    "arm64_fcompile",
    "default_cache_dir",
    "ensure_runtime",
    "export_arm64_library",
    "is_aarch64_elf",
    "qemu_cpu_for_features",
    "run_arm64",
]
