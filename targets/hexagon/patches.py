"""Python-side fixes that make TVM 0.27 build Relax models for Hexagon with no Hexagon SDK.

Each patch replaces one TVM function from outside site-packages; ``install_tvm_patches`` is idempotent
and cheap, so every build calls it (a later ``import tvm.contrib.hexagon`` re-registers TVM's own
linker with ``override=True``, and re-installing undoes that).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx

from banana.compiler.errors import ToolchainError

logger = logging.getLogger(__name__)

LINK_SHARED_FUNC = "tvm.contrib.hexagon.link_shared"
# Ops whose "hexagon.FLowerIntrinsic" rule (src/backend/hexagon/codegen/llvm/intrin_rule_hexagon.cc,
# DispatchTVMQHLWrapperFp16) still passes the pre-0.27 `num_signature` argument to
# call_llvm_pure_intrin, so codegen sees one extra uint32 argument and fails with
# "Cannot find intrinsic declaration, possible type mismatch: llvm.exp".
BROKEN_INTRINSICS: dict[str, tuple[str, int]] = {
    "tirx.exp": ("llvm.exp", 1),
    "tirx.sqrt": ("llvm.sqrt", 1),
    "tirx.sin": ("llvm.sin", 1),
    "tirx.cos": ("llvm.cos", 1),
    "tirx.floor": ("llvm.floor", 1),
    "prim.ceil": ("llvm.ceil", 1),
    "tirx.pow": ("llvm.pow", 2),
}
# Above TVM's level 10: ours wins the FLowerIntrinsic lookup for target kind "hexagon".
_INTRIN_LEVEL = 99

_lock = threading.Lock()
_installed = False
# (shared object, objects) of every link done by our linker, so build_hexagon can collect the .so.
link_log: list[tuple[str, list[str]]] = []


def _tirx_build_module() -> Any:
    # `tvm.tirx.build` is the *function* (re-exported), so the module must come from sys.modules.
    import tvm.tirx.build  # noqa: F401

    return sys.modules["tvm.tirx.build"]


_ORIGINAL_SPLIT: Callable[..., Any] = _tirx_build_module().split_host_device_mods


def split_host_device_mods(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[Any, tvm.IRModule]]:
    """Patch 1, replaces ``tvm.tirx.build.split_host_device_mods``.

    WHY: TVM's version counts only kinds llvm/c/cuda_host as host code; every ``hexagon`` function
    (including the packed-call entry points that use ``tvm_call_packed``) becomes "device" code and
    codegen fails with "unknown intrinsic tirx.tvm_call_packed". With host == hexagon, hexagon
    functions are host functions; mixed modules (other devices) keep TVM's behaviour for the rest.
    """
    def is_hexagon(f: Any) -> bool:
        target = f.attrs.get("target", None) if f.attrs is not None else None
        return target is not None and target.kind.name == "hexagon"

    hexagon_mod = tvm.tirx.transform.Filter(is_hexagon)(mod)
    if len(hexagon_mod.functions) == 0:
        return _ORIGINAL_SPLIT(mod)
    rest = tvm.tirx.transform.Filter(lambda f: not is_hexagon(f))(mod)
    host_mod, device_mods = _ORIGINAL_SPLIT(rest)
    host_mod.update(hexagon_mod)
    return host_mod, device_mods


def find_lld() -> str:
    """Path of an ``ld.lld`` that can link Hexagon ELF (Debian's lld has the Hexagon backend)."""
    path = shutil.which("ld.lld")
    if path is None:
        raise ToolchainError("ld.lld not found on PATH: install lld to link Hexagon shared objects")
    return path


def lld_link_shared(so_name: str, objs: Sequence[Any], extra_args: Any = None) -> int:
    """Patch 2, replaces the global ``tvm.contrib.hexagon.link_shared`` (tvm/contrib/hexagon/tools.py).

    WHY: TVM's ``BuildHexagon`` (codegen_hexagon.cc) links every module through this global, whose
    default calls the Hexagon SDK's ``hexagon-link`` and ``libgcc.so``; we have no SDK. ``ld.lld``
    links Hexagon ELF shared objects fine (no ``-m``: lld infers the machine from the objects).
    """
    paths = [o.value if hasattr(o, "value") else str(o) for o in objs]
    cmd = [find_lld(), "-shared", "--export-dynamic", "-o", str(so_name), *paths]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
        raise ToolchainError(f"ld.lld failed linking {so_name}: {first}")
    link_log.append((str(so_name), paths))
    return 0


def _make_intrin_rule(llvm_name: str, nargs: int) -> Callable[[Any], Any]:
    def lower(call: Any) -> Any:
        """Patch 3, overrides the ``hexagon.FLowerIntrinsic`` rule of one op (see BROKEN_INTRINSICS).

        WHY: TVM's rule emits ``call_llvm_pure_intrin(id, num_signature=1, x)`` but 0.27's codegen
        takes ``(id, x)``. We emit the current form; LLVM's Hexagon backend then lowers vector and
        scalar ``llvm.exp``/``llvm.sqrt``... to libm calls (``expf``/``sqrtf``) or HVX code itself.
        """
        args = list(call.args)
        if len(args) != nargs:
            return call
        return tirx.call_llvm_pure_intrin(call.ty, llvm_name, *args)

    return lower


def install_tvm_patches() -> None:
    """Install the three patches (idempotent; re-asserts the linker if something replaced it)."""
    global _installed
    with _lock:
        tvm_ffi.register_global_func(LINK_SHARED_FUNC, lld_link_shared, override=True)
        if _installed:
            return
        _tirx_build_module().split_host_device_mods = split_host_device_mods
        for op_name, (llvm_name, nargs) in BROKEN_INTRINSICS.items():
            tirx.op.register_intrin_lowering(
                op_name, "hexagon", f=_make_intrin_rule(llvm_name, nargs), level=_INTRIN_LEVEL
            )
        _installed = True
        logger.debug("installed banana's TVM patches for hexagon")
