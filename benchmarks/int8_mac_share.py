"""Share of the nano DiT's int8 GEMM MACs that arm64 ``sdot``/``udot`` (+dotprod) and
``smmla``/``usmmla`` (+i8mm) instructions issue, read from the kernels' assembly.

Method (static; no arm64 hardware and no qemu instruction counting plugin here):

1. Shapes: every Linear of ``DiT(nano)`` from ``dit_layer_shapes`` (the patch-embedding conv is a
   GEMM over patches), each weighted by how often it occurs, for int8 and uint8 activations.
2. Each shape's kernel (``int_gemm_primfunc``) is built for the dotprod and the i8mm target and its
   assembly (LLVM's output for exactly that object) is split into functions and loops (a loop is
   a label with a backward branch to it). The GEMM function is the one with the most dot
   instructions. Its innermost dot loops are either the k loop (the *hot loop*) or, where LLVM
   unrolled k completely, the loop over a task's register tiles.
3. Trip counts come from the kernel's loop extents (the TIR): ``tiles = ceil(m/rows) *
   ceil(n/cols)`` register tiles, each issuing ``steps = (rows*cols, or /4 for mmla's 2x2 tiles) *
   (main k steps + tail steps)`` dot instructions. A k loop holding ``d`` dots runs
   ``main-loop dots / d`` times per tile; the assembly must account for a whole number of tiles'
   ``steps`` (LLVM may unroll a task's tiles into copies), else the script fails rather than guess.
4. Dot MACs issued = dot instructions executed x MACs per instruction (sdot/udot 16 = 4 lanes x 4,
   smmla/usmmla 32 = 2 x 2 x 8). Other MACs = executed vector multiply instructions in the same
   functions (``mul``/``mla``/``smull``/``smlal``/... on ``v`` registers, x lanes); scalar
   ``mul``/``madd`` there is address arithmetic and not counted. The share is dot MACs on real
   (i, j, k) positions / (those + other MACs); ``lane_utilisation`` = m*n*k / dot MACs issued
   shows the work spent on padding (clamped rows of ragged tiles, k tails, GEMV rows in mmla).

    .venv/bin/python benchmarks/int8_mac_share.py [--verbose]

Last line: RESULT {"arm64_dot_mac_share": ..., "sdot_share": ..., "smmla_share": ..., ...}; sdot_share is the
dotprod target (sdot/udot), smmla_share the i8mm target (smmla/usmmla, and sdot/udot for its 1-row GEMMs:
smmla multiplies row pairs), smmla_only_share the part of the latter issued by smmla/usmmla.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

DOTPROD = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"], "num-cores": 4}
I8MM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm", "+fullfp16"],
        "num-cores": 4}
DOT_MACS = {"sdot": 16, "udot": 16, "smmla": 32, "usmmla": 32}
_DOT_RE = re.compile(r"^(sdot|udot|smmla|usmmla)\s")
# vector multiplies that would be MACs done outside the dot instructions: lanes from the arrangement
_VMUL_RE = re.compile(r"^(mul|mla|mls|smull2?|umull2?|smlal2?|umlal2?|sqdmulh|sqrdmulh)\s+v\d+\.(\d+)([bhsd])")
_BRANCH_RE = re.compile(r"^(?:b(?:\.\w+)?|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#\d+,)\s*(\.?L\w+)$")


@dataclass(frozen=True)
class LoopStats:
    """The hot loop of one kernel and what the TIR says about it."""

    instructions: int
    dots_in_hot_loop: int
    dots_outside: int
    trips_per_tile_group: int
    tile_copies: int
    other_vmul_lanes_per_tile_group: int


def _functions(asm: str) -> dict[str, list[str]]:
    """Instruction and label lines of each function in LLVM's assembly output."""
    funcs: dict[str, list[str]] = {}
    current: list[str] | None = None
    names = set(re.findall(r"^\s*\.type\s+([\w.$]+),@function", asm, flags=re.M))
    for raw in asm.splitlines():
        line = raw.split("//")[0].strip()
        if not line:
            continue
        label = re.match(r"^([\w.$]+):$", line)
        if label and label.group(1) in names:
            current = funcs.setdefault(label.group(1), [])
            continue
        if current is not None and (line.endswith(":") or not line.startswith(".")):
            current.append(line)
    return funcs


def _loops(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line index of each loop: a label and a later branch back to it."""
    labels = {line[:-1]: i for i, line in enumerate(lines) if line.endswith(":")}
    out = []
    for i, line in enumerate(lines):
        m = _BRANCH_RE.match(line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            out.append((labels[m.group(1)], i))
    return out


def _is_insn(line: str) -> bool:
    return not line.endswith(":")


def analyse(asm: str, dot_steps_per_tile_group: int, main_steps_per_tile_group: int) -> tuple[LoopStats, str]:
    """Hot-loop statistics of a kernel's assembly, checked against the TIR's dot count.

    ``dot_steps_per_tile_group``: dot instructions the TIR issues per register tile and k group
    (main steps + tail); ``main_steps_per_tile_group``: those in the main k loop.
    """
    # The GEMM is the function with the most dot instructions (its register tile is unrolled); the
    # uint8 row-sum pre-pass of the udot path has one or two (LLVM turns its byte sums into udot).
    funcs = sorted(_functions(asm).values(), key=lambda lines: -sum(bool(_DOT_RE.match(x)) for x in lines))
    if not funcs or not any(_DOT_RE.match(x) for x in funcs[0]):
        raise RuntimeError("no dot instruction in the kernel")
    return _analyse_function(funcs[0], dot_steps_per_tile_group, main_steps_per_tile_group)


def _analyse_function(lines: list[str], dot_steps_per_tile_group: int,
                      main_steps_per_tile_group: int) -> tuple[LoopStats, str]:
    mnemonics = {m.group(1) for x in lines if (m := _DOT_RE.match(x))}
    if len(mnemonics) != 1:
        raise RuntimeError(f"mixed dot instructions {mnemonics}")
    dot_name = mnemonics.pop()
    dot_idx = [i for i, x in enumerate(lines) if _DOT_RE.match(x)]
    loops = [lp for lp in _loops(lines) if any(lp[0] <= i <= lp[1] for i in dot_idx)]
    if not loops:
        raise RuntimeError("dot instructions outside any loop: not a kernel this script understands")
    steps, main = dot_steps_per_tile_group, main_steps_per_tile_group

    def dots_in(lp: tuple[int, int]) -> int:
        return sum(lp[0] <= i <= lp[1] for i in dot_idx)

    # Innermost dot loops: a k loop (trips = main-loop dots / dots per iteration) or, when LLVM
    # unrolled the k loop completely, the loop over a task's tiles (whole tiles, one trip each).
    # LLVM may also unroll a task's tiles, giving several copies of either.
    innermost = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    trips_of: dict[tuple[int, int], int] = {}
    for lp in innermost:
        d = dots_in(lp)
        if d % steps == 0:
            trips_of[lp] = 1
        elif main % d == 0:
            trips_of[lp] = main // d
        else:
            raise RuntimeError(f"a loop holds {d} dots: neither whole tiles ({steps}) nor a divisor of {main}")
    in_inner = {i for lp in innermost for i in dot_idx if lp[0] <= i <= lp[1]}
    d_rest = len(dot_idx) - len(in_inner)
    per_copy = sum(dots_in(lp) * t for lp, t in trips_of.items()) + d_rest
    if per_copy % steps:
        raise RuntimeError(f"the code issues {per_copy} dots, not a whole number of tiles of {steps}")
    copies = per_copy // steps  # tiles' worth of code (LLVM's unrolling of a task's tiles)
    hot = max(innermost, key=lambda lp: (dots_in(lp) * trips_of[lp], dots_in(lp)))
    vmul = 0
    for i, x in enumerate(lines):
        m = _VMUL_RE.match(x)
        if m and any(lp[0] <= i <= lp[1] for lp in loops):
            vmul += int(m.group(2)) * max([t for lp, t in trips_of.items() if lp[0] <= i <= lp[1]] or [1])
    stats = LoopStats(instructions=sum(_is_insn(x) for x in lines[hot[0]:hot[1] + 1]), dots_in_hot_loop=dots_in(hot),
                      dots_outside=d_rest, trips_per_tile_group=trips_of[hot], tile_copies=copies,
                      other_vmul_lanes_per_tile_group=-(-vmul // copies))
    return stats, dot_name


def nano_gemm_shapes() -> Counter[tuple[int, int, int]]:
    """(m, n, k) of every GEMM of the nano DiT (patch-embedding conv included) with its count."""
    from banana.compiler.zoo.dit import DIT_CONFIGS, dit_layer_shapes

    return Counter((d["M"], d["N"], d["K"]) for d in dit_layer_shapes(DIT_CONFIGS["nano"]) if d["kind"] == "linear")


def _kernel_geometry(func: Any, m: int, n: int, k: int, mmla: bool) -> tuple[int, int, int]:
    """(register tiles, dot instructions per tile, of which in the main k loop) from the kernel's
    knobs and loop extents (k_group = 0: one group)."""
    knobs = ast.literal_eval(str(func.attrs["banana.knobs"]))  # dict literal written by kernels.int_gemm.finish
    rows, cols = int(knobs["rows"]), int(knobs["cols"])
    per_step = (rows // 2) * (cols // 2) if mmla else rows * cols
    k_per_op = 8 if mmla else 16
    main_ops = k // k_per_op
    tail_ops = math.ceil((k % k_per_op) / k_per_op)
    tiles = math.ceil(m / rows) * math.ceil(n / cols)
    return tiles, per_step * (main_ops + tail_ops), per_step * main_ops


def measure(target: dict[str, Any], a_dtype: str, verbose: bool = False) -> dict[str, float]:
    """Dot-issued MAC share over the nano DiT's GEMMs for one target and activation dtype."""
    import tvm

    from banana.kernels.int_gemm import int_gemm_primfunc

    tvm_target = tvm.target.Target(target)
    useful = dot_useful = other = issued = mmla_useful = 0
    for (m, n, k), count in sorted(nano_gemm_shapes().items()):
        func = int_gemm_primfunc(m, n, k, target=tvm_target, a_dtype=a_dtype)
        asm = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                             target=tvm_target).inspect_source("asm")
        mmla = "i8mm" in str(func.attrs["banana.kernel"])  # GEMV rows go to sdot even with i8mm
        tiles, steps, main_steps = _kernel_geometry(func, m, n, k, mmla)
        stats, dot_name = analyse(asm, steps, main_steps)
        dots = tiles * steps  # validated by analyse: the code issues a whole number of tiles' steps
        macs_issued = dots * DOT_MACS[dot_name]
        other_macs = tiles * stats.other_vmul_lanes_per_tile_group
        macs = m * n * k
        useful += count * macs
        dot_useful += count * max(0, macs - other_macs)
        other += count * other_macs
        issued += count * macs_issued
        if dot_name.endswith("mmla"):
            mmla_useful += count * max(0, macs - other_macs)
        if verbose:
            print(f"  {a_dtype} {m:>3}x{n:>3}x{k:>3} x{count}: {dot_name:6} hot loop {stats.instructions:4} insns, "
                  f"{stats.dots_in_hot_loop:3} dots x {stats.trips_per_tile_group:2} trips "
                  f"({stats.tile_copies} tile copies), {tiles:3} tiles -> {macs_issued:>9} dot MACs for {macs:>9} "
                  f"({macs / macs_issued:.0%} lanes useful), other vector MACs {other_macs}")
    return {"share": dot_useful / (dot_useful + other), "lane_utilisation": useful / issued, "macs": float(useful),
            "mmla_share": mmla_useful / (dot_useful + other)}


def dot_mac_share(verbose: bool = False) -> float:
    """Share of the nano DiT's int8/uint8 GEMM MACs issued by sdot/udot/smmla/usmmla on arm64
    (MAC-weighted over both targets and both activation dtypes)."""
    results = [measure(t, a, verbose) for t in (DOTPROD, I8MM) for a in ("int8", "uint8")]
    return sum(r["share"] * r["macs"] for r in results) / sum(r["macs"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="one line per GEMM shape")
    args = parser.parse_args()
    per: dict[str, dict[str, float]] = {}
    for name, target in (("dotprod", DOTPROD), ("i8mm", I8MM)):
        for a_dtype in ("int8", "uint8"):
            print(f"{name} ({'+'.join(target['mattr'])}), {a_dtype} activations:")
            per[f"{name}/{a_dtype}"] = r = measure(target, a_dtype, verbose=args.verbose)
            print(f"  share of MACs by dot instructions {r['share']:.4f}, lanes useful {r['lane_utilisation']:.3f}")

    def pooled(keys: list[str], field: str) -> float:
        return sum(per[k][field] * per[k]["macs"] for k in keys) / sum(per[k]["macs"] for k in keys)

    dot_keys, mm_keys = ["dotprod/int8", "dotprod/uint8"], ["i8mm/int8", "i8mm/uint8"]
    result = {
        "arm64_dot_mac_share": round(pooled(dot_keys + mm_keys, "share"), 4),
        "sdot_share": round(pooled(dot_keys, "share"), 4),
        "smmla_share": round(pooled(mm_keys, "share"), 4),
        "sdot_lane_utilisation": round(pooled(dot_keys, "lane_utilisation"), 4),
        "smmla_lane_utilisation": round(pooled(mm_keys, "lane_utilisation"), 4),
        # on the i8mm target, 1-row GEMMs (adaLN, timestep MLP) run on sdot: MACs by smmla/usmmla alone
        "smmla_only_share": round(pooled(mm_keys, "mmla_share"), 4),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
