"""The aarch64 cross toolchain: finding it, and exporting TVM executables with it.

TVM's plain ``export_library`` links with the host ``g++`` and so produces an x86-64 file that
fails to load only later, on the device or under qemu; everything arm64 goes through here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from banana.compiler.errors import ArtifactError, ToolchainError

logger = logging.getLogger(__name__)

CROSS_CXX = "aarch64-linux-gnu-g++"
CROSS_TRIPLE = "aarch64-linux-gnu"
#: Debian package providing each external tool, so a ToolchainError can say what to install.
APT_PACKAGE = {
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
}
#: Sysroot of Debian's cross libc (libc6-arm64-cross, pulled in by the cross compiler).
SYSROOT = Path("/usr/aarch64-linux-gnu")


def require_tool(name: str) -> str:
    """Absolute path of an external tool, or a ToolchainError naming its apt package."""
    path = shutil.which(name)
    if path is None:
        pkg = APT_PACKAGE.get(name, name)
        raise ToolchainError(f"{name} not found on PATH: install it with `apt-get install {pkg}`")
    return path


def require_sysroot() -> Path:
    """The aarch64 glibc root qemu needs for dynamically linked programs."""
    if not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        raise ToolchainError(
            f"{SYSROOT}/lib/ld-linux-aarch64.so.1 missing: install `apt-get install g++-aarch64-linux-gnu`"
        )
    return SYSROOT


def arm64_fcompile(cxx: str | None = None) -> Callable[..., None]:
    """An ``fcompile`` for ``export_library`` that links a shared library with the cross g++.

    Written by hand instead of ``tvm.support.cc.cross_compiler`` because that helper appends
    each call's options to a shared default list, so options leak from one export to the next.
    """
    compiler = cxx or require_tool(CROSS_CXX)

    def _fcompile(output: str, objects: list[str], options: list[str] | None = None, **_: Any) -> None:
        from tvm.support import cc

        cc.create_shared(output, list(objects), options=list(options or []), cc=compiler)

    _fcompile.output_format = "so"  # type: ignore[attr-defined]
    _fcompile.get_target_triple = lambda: CROSS_TRIPLE  # type: ignore[attr-defined]
    return _fcompile


def is_aarch64_elf(path: Path) -> bool:
    """True if ``path`` is a 64-bit little-endian ELF for AArch64 (e_machine 183)."""
    with open(path, "rb") as f:
        head = f.read(20)
    return (
        len(head) == 20
        and head[:4] == b"\x7fELF"
        and head[4] == 2  # ELFCLASS64
        and head[5] == 1  # little endian
        and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    )


def export_arm64_library(executable: Any, path: Path) -> Path:
    """Export a ``tvm.compile`` result (relax Executable) as an arm64 ``.so``, atomically.

    The library is linked in a temp dir beside ``path`` and renamed into place, so a crash never
    leaves a half-written library where a runner would find it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fcompile = arm64_fcompile()
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        tmp_so = Path(tmp) / path.name
        try:
            executable.export_library(str(tmp_so), fcompile=fcompile, workspace_dir=tmp)
        except RuntimeError as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ToolchainError(f"linking {path} with {CROSS_CXX} failed: {last}") from e
        if not is_aarch64_elf(tmp_so):
            raise ArtifactError(f"{path}: exported library is not an AArch64 ELF")
        os.replace(tmp_so, path)
    logger.info("exported arm64 library %s (%d bytes)", path, path.stat().st_size)
    return path


def cross_compile(sources: list[Path], output: Path, options: list[str]) -> None:
    """Compile and link an aarch64 program; the message on failure names the output."""
    cmd = [require_tool(CROSS_CXX), *map(str, sources), "-o", str(output), *options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "error" in ln] or [""]
        raise ToolchainError(f"building {output.name} with {CROSS_CXX} failed: {lines[0].strip()}")
