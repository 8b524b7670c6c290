"""arm64 integer GEMM kernels: the instructions in their assembly (``sdot``/``udot`` with +dotprod,
``smmla``/``usmmla`` with +i8mm, ``smlal``/``smlal2`` for int16/uint16 activations on any arm64) and
numpy-golden results of the cross-built library run under qemu-aarch64 with the arm64 TVM runtime
(one library and one qemu run per target)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from banana.kernels.int_gemm import int_gemm_primfunc
from tests.kernels.test_int_gemm import CASES16, nibbles, random_operands, reference

DOTPROD = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"], "num-cores": 2}
I8MM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm", "+fullfp16"],
        "num-cores": 2}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
# qemu CPU models that have the features (cortex-a76 traps on smmla, see DESIGN.md)
QEMU_CPU = {"dotprod": "neoverse-n1", "i8mm": "max,sve=off,sme=off", "neon": "cortex-a53"}

# tile-aligned, ragged m/n/k, GEMV, int4 (even/odd k), k groups with and without a k tail
CASES = [
    (16, 128, 128, "int8", 8, 0),
    (16, 128, 128, "uint8", 8, 0),
    (5, 7, 37, "int8", 8, 0),
    (5, 7, 37, "uint8", 8, 0),
    (6, 9, 40, "int8", 4, 0),
    (3, 11, 33, "uint8", 4, 0),
    (9, 3, 13, "int8", 4, 0),
    (7, 10, 64, "int8", 8, 16),
    (7, 10, 60, "uint8", 4, 20),
    (1, 5, 24, "uint8", 8, 12),
    (10, 6, 64, "int8", 4, 32),
]


def _asm(target: dict, m: int, n: int, k: int, **kw: object) -> str:
    func = int_gemm_primfunc(m, n, k, target=tvm.target.Target(target), **kw)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(mod, target=tvm.target.Target(target)).inspect_source("asm")


def _count(asm: str, mnemonic: str) -> int:
    return len(re.findall(rf"^\s*{mnemonic}\s", asm, flags=re.M))


# ---------------------------------------------------------------- disassembly


@pytest.mark.parametrize(
    ("target", "a_dtype", "w_bits", "expected", "absent"),
    [
        (DOTPROD, "int8", 8, "sdot", ("udot", "smmla")),
        (DOTPROD, "uint8", 8, "udot", ("sdot", "smmla")),
        (DOTPROD, "int8", 4, "sdot", ("udot", "smmla")),
        (I8MM, "int8", 8, "smmla", ("sdot", "usmmla")),
        (I8MM, "uint8", 8, "usmmla", ("sdot", "udot")),
        (I8MM, "int8", 4, "smmla", ("sdot", "usmmla")),
    ],
)
def test_hot_loop_uses_dot_instructions(target: dict, a_dtype: str, w_bits: int, expected: str,
                                        absent: tuple[str, ...]) -> None:
    """The nano DiT's q/k/v/o shape (16x128x128): every chunk is one dot instruction per register tile."""
    asm = _asm(target, 16, 128, 128, a_dtype=a_dtype, w_bits=w_bits)
    assert _count(asm, expected) >= 8, f"no {expected} in the kernel"
    for other in absent:
        assert _count(asm, other) == 0, f"unexpected {other}"
    # no vector multiply besides the dot instructions (the MACs are not split off to mul/mla)
    assert not re.search(r"^\s*(mul|mla|smull2?|smlal2?|umull2?|umlal2?)\s+v\d+\.", asm, flags=re.M)


@pytest.mark.parametrize("target", [NEON, I8MM], ids=["neon", "i8mm"])
@pytest.mark.parametrize(("a_dtype", "w_bits"), [("int16", 8), ("uint16", 8), ("int16", 4)])
def test_16bit_activations_use_smlal(target: dict, a_dtype: str, w_bits: int) -> None:
    """fc2 of the nano DiT (16x128x256): every MAC in the k loop is a widening smull/smlal/smlal2 on
    .4h/.8h lanes; no dot instruction (none takes 16-bit lanes), no 32-bit mul/mla emulation, no spill."""
    asm = _asm(target, 16, 128, 256, a_dtype=a_dtype, w_bits=w_bits)
    hot = _hot_loop(asm, "smlal2")
    macs = re.findall(r"^\s*(smull|smlal|smlal2)\s+v\d+\.4s, v\d+\.(4h|8h), v\d+\.(4h|8h)", hot, flags=re.M)
    # 4x2 register tile, 16 k per step: 8 accumulators x 4 widening MACs (4 lanes each)
    assert len(macs) == 32, hot
    assert sum(m[0] == "smlal2" for m in macs) >= 8
    for other in ("sdot", "udot", "smmla", "usmmla", "mul", "mla"):
        assert _count(hot, other) == 0, f"unexpected {other}"
    assert not re.search(r"\[sp", hot), "stack access (spill) in the hot loop"
    if w_bits == 8:  # int8 W widened with sshll/sshll2 (sign extension), not zero extension
        assert _count(hot, "sshll") + _count(hot, "sshll2") >= 2 and _count(hot, "ushll") == 0


def _hot_loop(asm: str, mnemonic: str) -> str:
    """The shortest loop body (label .. its backward branch) that holds ``mnemonic``: the innermost k loop."""
    best = None
    for label in re.finditer(r"^(\.LBB\d+_\d+):$", asm, flags=re.M):
        end = re.compile(rf"^\s*b(\.\w+)?\s+{re.escape(label.group(1))}$", re.M).search(asm, label.end())
        if end is None:
            continue
        body = asm[label.end():end.start()]
        if _count(body, mnemonic) and (best is None or len(body) < len(best)):
            best = body
    assert best is not None, f"no loop with {mnemonic}"
    return best


def test_int4_unpacks_with_byte_shifts_in_registers() -> None:
    """int4 nibbles are sign-extended with 8-lane byte shifts (no widening to 16 bits)."""
    for target in (DOTPROD, I8MM):
        asm = _asm(target, 16, 128, 128, w_bits=4)
        assert re.search(r"^\s*sshr\s+v\d+\.(8b|16b), v\d+\.(8b|16b), #4", asm, flags=re.M)
        assert not re.search(r"^\s*sshr\s+v\d+\.(4h|8h)", asm, flags=re.M)


# ---------------------------------------------------------------- numpy-golden results under qemu


def _need_cross_tools() -> None:
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def _build_and_run(target: dict, qemu_cpu: str, tmp: Path, cases: list[tuple] = CASES
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """All ``cases`` as call_tir's of one Relax main, cross-built and run once under qemu."""
    from banana.targets.arm64 import export_arm64_library, run_arm64

    tvm_target = tvm.target.Target(target)
    rng = np.random.default_rng(5)
    arrays, refs = [], []
    for m, n, k, a_dtype, w_bits, k_group in cases:
        a, w = random_operands(rng, m, n, k, a_dtype, w_bits)
        arrays += [a, nibbles(w) if w_bits == 4 else w]
        refs.append(reference(a, w, k_group))
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype))) for i, x in enumerate(arrays)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = []
            for idx, (m, n, k, a_dtype, w_bits, k_group) in enumerate(cases):
                func = int_gemm_primfunc(m, n, k, target=tvm_target, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
                gv = bb.add_func(func, f"int_gemm_{idx}")
                outs.append(bb.emit(relax.call_tir(gv, [params[2 * idx], params[2 * idx + 1]],
                                                   relax.TensorType(refs[idx].shape, "int32"))))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    lib = export_arm64_library(tvm.compile(bb.get(), target=tvm_target), tmp / "int_gemm.so")
    weights = tmp / "empty.params"
    tvm.runtime.save_param_dict_to_file({}, str(weights))
    run = run_arm64(lib, weights, arrays, qemu_cpu=qemu_cpu)
    return list(zip(run.outputs, refs, strict=True))


@pytest.fixture(scope="module")
def qemu_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    _need_cross_tools()
    results = {}
    for name, target in (("dotprod", DOTPROD), ("i8mm", I8MM)):
        results[name] = _build_and_run(target, QEMU_CPU[name], tmp_path_factory.mktemp(f"int_gemm_{name}"))
    return results


@pytest.fixture(scope="module")
def qemu_results16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """16-bit activations: smlal on a plain NEON core, and the same kernel chosen on an i8mm target."""
    _need_cross_tools()
    return {name: _build_and_run(target, QEMU_CPU[cpu], tmp_path_factory.mktemp(f"int_gemm_{name}"), CASES16)
            for name, target, cpu in (("neon16", NEON, "neon"), ("i8mm16", I8MM, "i8mm"))}


@pytest.mark.parametrize("isa", ["dotprod", "i8mm"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "x".join(map(str, CASES[i])))
def test_arm64_matches_numpy_under_qemu(qemu_results: dict, isa: str, index: int) -> None:
    out, ref = qemu_results[isa][index]
    assert out.dtype == np.int32 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


@pytest.mark.slow  # two more cross-builds and qemu runs: ~35 s on the shared 2-core host
@pytest.mark.parametrize("isa", ["neon16", "i8mm16"])
@pytest.mark.parametrize("index", range(len(CASES16)), ids=lambda i: "x".join(map(str, CASES16[i])))
def test_arm64_16bit_activations_match_numpy_under_qemu(qemu_results16: dict, isa: str, index: int) -> None:
    out, ref = qemu_results16[isa][index]
    assert out.dtype == np.int32 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------- the MAC-share benchmark's assembly analysis


def _mac_share_module():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_mac_share.py"
    spec = importlib.util.spec_from_file_location("int8_mac_share", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("int8_mac_share", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_mac_share_analysis_reads_the_hot_loop() -> None:
    """16x128x256 on dotprod: a 4x4 tile is 16 sdot per 16-k step, 16 steps: the k loop holds 16 sdot x 16 trips
    (or LLVM unrolled it by a divisor); a per-tile dot count the code cannot issue is rejected, not rounded.
    (Trip counts come from the TIR: a count the hot loop divides evenly is taken at its word.)"""
    bench = _mac_share_module()
    asm = _asm(DOTPROD, 16, 128, 256)
    stats, name = bench.analyse(asm, 16 * 16, 16 * 16)
    assert name == "sdot"
    assert stats.dots_in_hot_loop * stats.trips_per_tile_group == 256 * stats.tile_copies
    assert stats.other_vmul_lanes_per_tile_group == 0
    with pytest.raises(RuntimeError):
        bench.analyse(asm, 250, 250)
