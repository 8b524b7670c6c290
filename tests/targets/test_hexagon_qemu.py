"""qemu-hexagon runner (freestanding driver, e_flags patch, dynamic profile) and the asm hot-loop helpers."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from banana.compiler.errors import BadConfigError, VerificationError
from banana.targets.hexagon import hexagon_target
from banana.targets.hexagon.asm import innermost_loops, instruction_macs, mac_share
from banana.targets.hexagon.qemu import (
    TensorSpec,
    driver_source,
    patch_e_flags,
    qemu_available,
    run_primfunc,
)

TARGET = tvm.target.Target(hexagon_target("v73"))
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="qemu-hexagon, clang-15 or ld.lld missing")


def _affine_u8() -> tvm.tirx.PrimFunc:
    """Integer HVX work: 256 uint8 lanes, vectorized to two 128-byte vectors."""

    @T.prim_func(s_tir=True)
    def affine(a: T.Buffer((256,), "uint8"), b: T.Buffer((256,), "int32"), c: T.Buffer((256,), "uint8")):
        for i in T.vectorized(256):
            with T.sblock("c"):
                vi = T.axis.spatial(256, i)
                c[vi] = T.Cast("uint8", (T.Cast("int32", a[vi]) * 3 + b[vi]) % 256)

    return affine


# ---------------------------------------------------------------- driver pieces (no toolchain)


def test_patch_e_flags_rewrites_only_the_arch(tmp_path):
    path = tmp_path / "x.elf"
    header = bytearray(52)
    header[:5] = b"\x7fELF\x01"
    struct.pack_into("<I", header, 36, 0x1073)  # some flag bits + v73
    path.write_bytes(bytes(header) + b"rest")
    assert patch_e_flags(path) == 0x1073
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 36)[0] == 0x1067 and data.endswith(b"rest")


def test_driver_source_declares_the_abi_and_every_tensor():
    src = driver_source("gemm", [TensorSpec((4, 16), "int8"), TensorSpec((4,), "uint16")], outputs=[1])
    for needle in ("__tvm_ffi_gemm(void *", "__TVMBackendAllocWorkspace = ws_alloc", "__tvm_set_device",
                   "static int64_t shape0[] = {4, 16};", "{1, 16, 1}", "put(1, buf1, 8);", "get(buf0, 64);"):
        assert needle in src, needle
    with pytest.raises(BadConfigError):
        driver_source("not a symbol", [], [])


# ---------------------------------------------------------------- runs under qemu


@needs_qemu
def test_run_primfunc_matches_numpy_and_profiles_hvx(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, 256).astype(np.uint8)
    b = rng.integers(-1000, 1000, 256).astype(np.int32)
    prof: dict[str, float] = {}
    (c,) = run_primfunc(_affine_u8(), [a, b, np.zeros(256, np.uint8)], [2], TARGET, work_dir=tmp_path,
                        profile=prof)
    np.testing.assert_array_equal(c, ((a.astype(np.int64) * 3 + b) % 256).astype(np.uint8))
    assert prof["hvx_total"] > 0 and prof["hvx_loads"] > 0 and prof["packets"] > 0
    assert (tmp_path / "kernel.elf").is_file()


@needs_qemu
def test_kernel_argument_check_failure_is_reported(tmp_path):
    """A wrong shape makes TVM's own argument check fail inside qemu; the message reaches the error."""
    a, b = np.zeros(256, np.uint8), np.zeros(256, np.int32)
    with pytest.raises(VerificationError, match="shape"):
        run_primfunc(_affine_u8(), [a, b, np.zeros(128, np.uint8)], [2], TARGET, work_dir=tmp_path)


# ---------------------------------------------------------------- asm helpers

LOOPS = """\
f:
	{ loop1(.LBB0_1,#4); r0 = #0 }
.LBB0_1:
	{ loop0(.LBB0_2,#8); v0 = vmem(r1+#0) }
.LBB0_2:
	{
		v1.w += vrmpy(v2.b,v3.b)
		v4.w += vrmpy(v5.ub,v3.b)
		r4 = mpyi(r4,r5)
	}
	{
		v7:6.w += vdmpy(v9:8.h,r2.b)
		v10 = vsplat(r3)
	} :endloop0
	{ vmem(r1+#1) = v1 } :endloop1
.LBB0_3:
	{ r6 = add(r6,#1); v11.w += vrmpy(v2.b,v3.b) }
	{ p0 = cmp.gt(r6,#9); if (!p0.new) jump:t .LBB0_3 }
	jumpr r31
"""


def test_innermost_loops_finds_hardware_and_branch_loops():
    assert len(innermost_loops(LOOPS)) == 1  # hardware loops only by default
    loops = innermost_loops(LOOPS, branch_loops=True)
    assert len(loops) == 2
    assert loops[0].splitlines()[0] == ".LBB0_2:" and ":endloop0" in loops[0] and "endloop1" not in loops[0]
    assert loops[1].startswith(".LBB0_3:") and "jump:t .LBB0_3" in loops[1]


def test_instruction_macs_by_form():
    assert instruction_macs("v1.w += vrmpy(v2.b,v3.b)") == ("hvx.vrmpy", 128)
    assert instruction_macs("v7:6.w += vdmpy(v9:8.h,r2.b)") == ("hvx.vdmpy", 128)
    assert instruction_macs("v5.w += vdmpy(v2.h,r0.h):sat") == ("hvx.vdmpy", 64)
    assert instruction_macs("r4 = mpyi(r4,r5)") == ("scalar.mpyi", 1)
    assert instruction_macs("v10 = vsplat(r3)") == ("hvx.vsplat", 0)


def test_mac_share_of_hot_loop():
    share = mac_share(innermost_loops(LOOPS)[0])
    assert share["macs_total"] == 128 + 128 + 1 + 128
    assert share["share"] == pytest.approx(256 / 385)
