"""Run a TVM-built Hexagon PrimFunc under Debian's ``qemu-hexagon`` (linux-user) with no Hexagon SDK.

Why a freestanding driver: there is no Hexagon TVM runtime or libc here. TVM's generated code needs
only a few things from its host, so a small C program (``clang-15 --target=hexagon``) provides them:
the packed-call ABI (``__tvm_ffi_<name>(self, TVMFFIAny* args, n, result)`` with DLTensor arguments of
device type ``kDLHexagon``), the workspace allocator (TVM's object calls through the function pointers
``__TVMBackendAllocWorkspace``/``__TVMBackendFreeWorkspace``, weak in both objects; the driver points
them at a bump allocator), the error hook ``TVMFFIErrorSetRaisedFromCStrParts``, ``memset``/``memcpy`` and compiler-rt's
``__hexagon_memcpy_likely_aligned_min32bytes_mult8bytes``.
Input tensors arrive on stdin, output tensors leave on stdout, both as raw little-endian bytes, via
raw ``trap0`` syscalls. ``ld.lld -static`` links driver and kernel object; qemu 7.2 knows Hexagon only
up to v67, so the executable's ``e_flags`` are rewritten to v67 (the v73 object's integer HVX code
runs; float HVX does not).
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import tirx

from banana.compiler.errors import BadConfigError, ToolchainError, VerificationError

from . import patches
from .asm import hvx_instruction_stats, instruction_macs
from .build import _private_tmpdir

logger = logging.getLogger(__name__)

QEMU = "qemu-hexagon"
CLANG = "clang-15"
QEMU_MAX_ARCH = 0x67  # EF_HEXAGON_MACH_V67: the newest arch qemu 7.2 accepts
KDL_HEXAGON = 16
_DLPACK_CODES = {"i": 0, "u": 1, "f": 2}
DEFAULT_ARENA_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one packed-call argument."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> TensorSpec:
        return cls(tuple(int(d) for d in array.shape), str(array.dtype))


def qemu_available() -> bool:
    """True when qemu-hexagon, clang-15 and ld.lld are all on PATH."""
    return all(shutil.which(tool) for tool in (QEMU, CLANG, "ld.lld"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} not found on PATH (needed to run Hexagon code under qemu)")
    return path


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, check=False, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        lines = err.strip().splitlines() or ["(no output)"]
        first = next((line for line in lines if "error" in line.lower()), lines[-1])
        raise ToolchainError(f"{what} failed (exit {proc.returncode}): {first}")
    return proc


def build_kernel_object(func: tirx.PrimFunc, symbol: str, target: tvm.target.Target | dict,
                        work_dir: Path) -> tuple[Path, str]:
    """Compile one PrimFunc for Hexagon; return (its object file in ``work_dir``, its assembly)."""
    patches.install_tvm_patches()
    tgt = tvm.target.Target(target) if isinstance(target, dict) else target
    if tgt.kind.name != "hexagon":
        raise BadConfigError(f"build_kernel_object: target kind {tgt.kind.name!r}, expected 'hexagon'")
    work_dir = Path(work_dir)
    scratch = work_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    mod = tvm.tirx.transform.BindTarget(tgt)(tvm.IRModule({symbol: func.with_attr("global_symbol", symbol)}))
    with _private_tmpdir(scratch):
        n_links = len(patches.link_log)
        lib = tvm.tirx.build(mod, target=tgt)
        links = patches.link_log[n_links:]
    if not links or len(links[-1][1]) != 1:
        raise ToolchainError("build_kernel_object: expected one object from TVM's hexagon link")
    obj = work_dir / f"{symbol}.o"
    shutil.copyfile(links[-1][1][0], obj)
    shutil.rmtree(scratch, ignore_errors=True)
    return obj, lib.inspect_source("s")


_DRIVER_HEAD = r"""
#include <stdint.h>
typedef struct { int32_t device_type, device_id; } DLDevice;
typedef struct { uint8_t code, bits; uint16_t lanes; } DLDataType;
typedef struct { void *data; DLDevice device; int32_t ndim; DLDataType dtype; int64_t *shape;
                 int64_t *strides; uint64_t byte_offset; } DLTensor;
typedef struct { int32_t type_index; uint32_t pad; union { int64_t v_int64; void *v_ptr; } v; } TVMFFIAny;

static long sys3(long nr, long a, long b, long c) {
  register long r0 asm("r0") = a; register long r1 asm("r1") = b; register long r2 asm("r2") = c;
  register long r6 asm("r6") = nr;
  asm volatile("trap0(#1)" : "+r"(r0) : "r"(r1), "r"(r2), "r"(r6) : "memory");
  return r0;
}
static void put(int fd, const void *p, long n) {
  const char *c = p; while (n > 0) { long w = sys3(64, fd, (long)c, n); if (w <= 0) break; c += w; n -= w; }
}
static long slen(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void get(void *p, long n) {
  char *c = p; while (n > 0) { long r = sys3(63, 0, (long)c, n); if (r <= 0) sys3(94, 3, 0, 0); c += r; n -= r; }
}
__attribute__((weak)) void *memset(void *d, int v, unsigned long n) {
  volatile char *p = d; while (n--) *p++ = (char)v; return d;
}
__attribute__((weak)) void *memcpy(void *d, const void *s, unsigned long n) {
  volatile char *p = d; const char *q = s; while (n--) *p++ = *q++; return d;
}
__attribute__((weak)) void *memmove(void *d, const void *s, unsigned long n) {
  volatile char *p = d; const char *q = s;
  if (p < q) { while (n--) *p++ = *q++; } else { p += n; q += n; while (n--) *--p = *--q; }
  return d;
}
/* compiler-rt helper LLVM's Hexagon backend calls for some copies (plain C calling convention) */
__attribute__((weak)) void *__hexagon_memcpy_likely_aligned_min32bytes_mult8bytes(void *d, const void *s,
                                                                                  unsigned long n) {
  return memcpy(d, s, n);
}
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  put(2, kind, slen(kind)); put(2, ": ", 2);
  for (int32_t i = 0; i < n; i++) put(2, parts[i], slen(parts[i]));
  put(2, "\n", 1);
}
static char arena[ARENA_BYTES] __attribute__((aligned(128)));
static unsigned long arena_top;
static void *ws_alloc(int dev, int id, uint64_t nbytes, int code, int bits) {
  unsigned long at = (arena_top + 127) & ~127ul;
  if (at + nbytes > ARENA_BYTES) { put(2, "driver: workspace arena exhausted\n", 34); return 0; }
  arena_top = at + nbytes; return arena + at;
}
static int ws_free(int dev, int id, void *p) { return 0; }
__attribute__((weak)) void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
__attribute__((weak)) int (*__TVMBackendFreeWorkspace)(int, int, void *);
/* Device code starts with a packed call to "__tvm_set_device": one device here, so it is a no-op. */
static int streq(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return *a == *b; }
static int lookup(void *ctx, const char *name, void **out) {
  if (!streq(name, "__tvm_set_device")) {
    put(2, "driver: unknown packed function ", 32); put(2, name, slen(name)); put(2, "\n", 1);
    return -1;
  }
  *out = (void *)1; return 0;
}
static int call_noop(void *fn, const TVMFFIAny *args, int32_t n, TVMFFIAny *result) {
  result->type_index = 0; return 0;
}
static int init_once(void **slot, int (*init)(void **)) { return *slot ? 0 : init(slot); }
__attribute__((weak)) int (*__TVMFFIEnvModLookupFromImports)(void *, const char *, void **);
__attribute__((weak)) int (*__TVMFFIHandleInitOnce)(void **, int (*)(void **));
__attribute__((weak)) int (*__TVMFFIFunctionCall)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);
"""


def driver_source(symbol: str, args: Sequence[TensorSpec], outputs: Sequence[int],
                  arena_bytes: int = DEFAULT_ARENA_BYTES) -> str:
    """C source of a driver calling ``__tvm_ffi_<symbol>`` with ``args`` read from stdin, ``outputs`` to stdout."""
    if not symbol.isidentifier():
        raise BadConfigError(f"driver_source: symbol {symbol!r} is not a C identifier")
    lines = [f"#define ARENA_BYTES {int(arena_bytes)}ul", _DRIVER_HEAD,
             f"extern int __tvm_ffi_{symbol}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);"]
    body = ["void _start(void) {", "  __TVMBackendAllocWorkspace = ws_alloc;",
            "  __TVMBackendFreeWorkspace = ws_free;",
            "  __TVMFFIEnvModLookupFromImports = lookup;", "  __TVMFFIFunctionCall = call_noop;",
            "  __TVMFFIHandleInitOnce = init_once;", f"  static TVMFFIAny args[{len(args)}];"]
    for idx, spec in enumerate(args):
        dt = np.dtype(spec.dtype)
        if dt.kind not in _DLPACK_CODES:
            raise BadConfigError(f"driver_source: dtype {spec.dtype} has no DLPack code here")
        shape = ", ".join(str(d) for d in spec.shape) or "1"
        lines.append(f"static char buf{idx}[{max(spec.nbytes, 1)}] __attribute__((aligned(128)));")
        lines.append(f"static int64_t shape{idx}[] = {{{shape}}};")
        lines.append(
            f"static DLTensor t{idx} = {{buf{idx}, {{{KDL_HEXAGON}, 0}}, {len(spec.shape)}, "
            f"{{{_DLPACK_CODES[dt.kind]}, {dt.itemsize * 8}, 1}}, shape{idx}, 0, 0}};")
        body += [f"  get(buf{idx}, {spec.nbytes});", f"  args[{idx}].type_index = 7;",
                 f"  args[{idx}].v.v_ptr = &t{idx};"]
    body += ["  TVMFFIAny result = {0};",
             f"  int rc = __tvm_ffi_{symbol}(0, args, {len(args)}, &result);",
             "  if (rc != 0) sys3(94, 2, 0, 0);"]
    for idx in outputs:
        body.append(f"  put(1, buf{idx}, {args[idx].nbytes});")
    body += ["  sys3(94, 0, 0, 0);", "  for (;;) {}", "}"]
    return "\n".join(lines + body) + "\n"


def patch_e_flags(path: Path, arch: int = QEMU_MAX_ARCH) -> int:
    """Set the Hexagon arch in an ELF32 header's ``e_flags`` (qemu 7.2 rejects > v67); return the old value."""
    data = bytearray(Path(path).read_bytes())
    if data[:4] != b"\x7fELF" or data[4] != 1:
        raise ToolchainError(f"{path}: not an ELF32 file")
    old = struct.unpack_from("<I", data, 36)[0]
    struct.pack_into("<I", data, 36, (old & ~0xFFF) | arch)
    Path(path).write_bytes(bytes(data))
    return old


def link_driver(kernel_obj: Path, source: str, out_path: Path) -> Path:
    """Compile the driver and link it with the kernel object into a static Hexagon executable."""
    out_path = Path(out_path)
    c_path = out_path.with_suffix(".c")
    c_path.write_text(source)
    drv_obj = out_path.with_suffix(".driver.o")
    _run([_tool(CLANG), "--target=hexagon", "-mcpu=hexagonv67", "-mhvx", "-mhvx-length=128b",
          "-ffreestanding", "-fno-builtin", "-nostdlib", "-O1", "-c", str(c_path), "-o", str(drv_obj)],
         "clang-15 (hexagon driver)")
    _run([patches.find_lld(), "-static", "-e", "_start", "-o", str(out_path), str(drv_obj), str(kernel_obj)],
         "ld.lld (hexagon driver)")
    old = patch_e_flags(out_path)
    logger.debug("linked %s (e_flags 0x%x -> v67)", out_path, old)
    return out_path


def run_qemu(elf: Path, stdin: bytes, timeout_s: float = 120.0) -> bytes:
    """Run a static Hexagon executable under qemu-hexagon; return its stdout."""
    try:
        proc = subprocess.run([_tool(QEMU), str(elf)], input=stdin, capture_output=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise VerificationError(f"qemu-hexagon {elf.name}: no result within {timeout_s:.0f} s") from err
    if proc.returncode != 0:
        err_text = proc.stderr.decode(errors="replace").strip()
        raise VerificationError(f"qemu-hexagon {elf.name} exited {proc.returncode}: {err_text[-500:]}")
    return proc.stdout


_TB_HEADER = re.compile(r"^IN:\s*(\S*)")
_TB_LINE = re.compile(r"^0x([0-9a-f]+):\s+0x[0-9a-f]+\s*(.*)$")
_TB_EXEC = re.compile(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")


def _driver_symbols(obj: Path) -> set[str]:
    out = _run([shutil.which("llvm-objdump") or "llvm-objdump", "-t", str(obj)], "llvm-objdump").stdout
    return {line.split()[-1] for line in out.decode().splitlines() if " F " in line and ".text" in line}


def profile_qemu(elf: Path, stdin: bytes, skip_symbols: set[str], timeout_s: float = 300.0) -> dict[str, float]:
    """Dynamic instruction counts of one run: qemu logs each translated block's disassembly and every
    block execution (``-d in_asm,exec,nochain``); counts are per-block statistics times executions.

    Blocks whose symbol is in ``skip_symbols`` (the driver) are left out. Keys as in
    :func:`hvx_instruction_stats` plus ``macs.<kind>`` and ``macs_total`` (see :func:`instruction_macs`).
    """
    log = Path(elf).with_suffix(".qemu.log")
    try:
        proc = subprocess.run([_tool(QEMU), "-d", "in_asm,exec,nochain", "-D", str(log), str(elf)],
                              input=stdin, capture_output=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise VerificationError(f"qemu-hexagon {Path(elf).name} (profiled) exited {proc.returncode}")
        blocks: dict[str, tuple[str, list[str]]] = {}
        runs: Counter[str] = Counter()
        current: list[str] | None = None
        with log.open(errors="replace") as fh:
            for line in fh:
                head = _TB_HEADER.match(line)
                if head:
                    current, symbol = [], head.group(1)
                    continue
                body = _TB_LINE.match(line) if current is not None else None
                if body and current is not None:
                    if not current:
                        blocks[body.group(1).lstrip("0")] = (symbol, current)
                    current.append(body.group(2))
                    continue
                current = None
                ran = _TB_EXEC.match(line)
                if ran:
                    runs[ran.group(1).lstrip("0")] += 1
    finally:
        log.unlink(missing_ok=True)
    totals: Counter[str] = Counter()
    for pc, count in runs.items():
        if pc not in blocks or blocks[pc][0] in skip_symbols:
            continue
        text = "\n".join(blocks[pc][1]).lower()
        text = re.sub(r"immext\([^)]*\)\s*;?", "", text)
        for key, value in hvx_instruction_stats(text).items():
            totals[key] += value * count
        for line in text.splitlines():
            for instr in re.sub(r"[{}]", "", line).split(";"):
                if instr.strip():
                    key, macs = instruction_macs(instr.strip())
                    if macs:
                        totals[f"macs.{key}"] += macs * count
                        totals["macs_total"] += macs * count
    return {k: float(v) for k, v in sorted(totals.items())}


def run_primfunc(func: tirx.PrimFunc, args: Sequence[np.ndarray], outputs: Sequence[int],
                 target: tvm.target.Target | dict, work_dir: Path | None = None,
                 symbol: str = "kernel", profile: dict[str, float] | None = None) -> list[np.ndarray]:
    """Build ``func`` for Hexagon, run it once under qemu with ``args``; return the ``outputs`` args.

    Output arguments are passed in too (their initial contents are what the kernel sees). With a
    ``profile`` dict, the kernel's dynamic instruction counts (:func:`profile_qemu`) are added to it.
    """
    owned = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="banana-hexqemu-")) if owned else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        specs = [TensorSpec.of(np.asarray(a)) for a in args]
        obj, _ = build_kernel_object(func, symbol, target, work)
        elf = link_driver(obj, driver_source(symbol, specs, outputs), work / f"{symbol}.elf")
        stdin = b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes() for a in args)
        raw = run_qemu(elf, stdin)
        if profile is not None:
            profile.update(profile_qemu(elf, stdin, _driver_symbols(elf.with_suffix(".driver.o"))))
        want = sum(specs[i].nbytes for i in outputs)
        if len(raw) != want:
            raise VerificationError(f"qemu-hexagon {elf.name}: {len(raw)} bytes of output, expected {want}")
        results, offset = [], 0
        for i in outputs:
            spec = specs[i]
            dt = np.dtype(spec.dtype).newbyteorder("<")
            results.append(np.frombuffer(raw, dtype=dt, count=spec.nbytes // dt.itemsize, offset=offset)
                           .astype(spec.dtype).reshape(spec.shape))
            offset += spec.nbytes
        return results
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


__all__ = [
    "TensorSpec",
    "build_kernel_object",
    "driver_source",
    "link_driver",
    "patch_e_flags",
    "profile_qemu",
    "qemu_available",
    "run_primfunc",
    "run_qemu",
]
