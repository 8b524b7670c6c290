"""Measure the HVX integer GEMM on the nano DiT's linear shapes: static hot-loop stats and qemu counts.

Why a module and not a test: it builds ~30 kernels and runs each under qemu-hexagon (minutes); its
output is the table in ``kernels/NOTES_int_gemm_hexagon.md``. Run it with
``python -m banana.kernels.hexagon_gemm_report`` (TMPDIR pointing at a scratch directory).

Per shape and variant it reports: the innermost-loop statistics of LLVM's assembly (vrmpy/vdmpy
count, packets, share of hot-loop MACs issued by vrmpy/vdmpy; "no loop" = LLVM unrolled the k loop
completely and the whole function is counted), and from one qemu run with the
execution trace: executed vrmpy/vdmpy, executed packets of the whole kernel, the share of the
kernel's MACs issued by vrmpy/vdmpy, the useful fraction of those MACs (padding of m to the 4-row
tile and of n to 64 columns costs the rest) and whether the result equals numpy's.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import tvm

from banana.compiler.zoo.dit import DIT_CONFIGS, dit_layer_shapes
from banana.targets.hexagon import hexagon_target
from banana.targets.hexagon.asm import hvx_instruction_stats, innermost_loops, mac_share
from banana.targets.hexagon.qemu import build_kernel_object, run_primfunc

from .int_gemm_hexagon import hvx_gemm_layout, hvx_int_gemm_primfunc, hvx_prepack_weights

logger = logging.getLogger(__name__)

VARIANTS = (("int8", False), ("int8", True), ("int16", True))


def nano_dit_gemm_shapes() -> Counter[tuple[int, int, int]]:
    """(M, N, K) of every linear layer of the nano DiT at its native size -> how often it occurs."""
    layers = dit_layer_shapes(DIT_CONFIGS["nano"])
    return Counter((e["M"], e["N"], e["K"]) for e in layers if e["kind"] == "linear")


def measure(m: int, n: int, k: int, a_dtype: str, prepacked: bool, work: Path, seed: int = 0) -> dict:
    """One kernel: build, inspect its hot loops, run it once under qemu with the execution profile."""
    target = tvm.target.Target(hexagon_target("v73"))
    mnemonic = "hvx.vrmpy" if a_dtype in ("int8", "uint8") else "hvx.vdmpy"
    func = hvx_int_gemm_primfunc(m, n, k, target=target, a_dtype=a_dtype, prepacked=prepacked)
    _, asm = build_kernel_object(func, "gemm", target, work)
    hot = "\n".join(b for b in innermost_loops(asm) if hvx_instruction_stats(b).get(mnemonic, 0))
    unrolled = not hot  # tiny k: LLVM unrolled the k loop completely; count the whole function instead
    if unrolled:
        hot = asm
    static = hvx_instruction_stats(hot)
    rng = np.random.default_rng(seed)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max, size=(m, k), endpoint=True).astype(a_dtype)
    w = rng.integers(-128, 128, size=(n, k)).astype(np.int8)
    w_arg = hvx_prepack_weights(w, hvx_gemm_layout(m, n, k, a_dtype=a_dtype)) if prepacked else w
    profile: dict[str, float] = {}
    (c,) = run_primfunc(func, [a, w_arg, np.zeros((m, n), np.int32)], [2], target, work_dir=work,
                        profile=profile)
    exact = bool(np.array_equal(c, (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)))
    vec_macs = profile.get(f"macs.{mnemonic}", 0.0)
    return {
        "M": m, "N": n, "K": k, "a_dtype": a_dtype, "prepacked": prepacked,
        "hot_loop_unrolled": unrolled, "hot_loop_mul_instrs": static.get(mnemonic, 0),
        "hot_loop_packets": static["packets"],
        "hot_loop_mac_share": mac_share(hot, (mnemonic,))["share"] if hot else 0.0,
        "executed_mul_instrs": profile.get(mnemonic, 0.0), "executed_packets": profile.get("packets", 0.0),
        "kernel_mac_share": vec_macs / profile["macs_total"] if profile.get("macs_total") else 0.0,
        "useful_mac_fraction": m * n * k / vec_macs if vec_macs else 0.0,
        "macs_per_packet": m * n * k / profile["packets"] if profile.get("packets") else 0.0,
        "exact": exact,
    }


def report(variants: tuple[tuple[str, bool], ...] = VARIANTS) -> list[dict]:
    """Measure every nano DiT linear shape in every variant; rows carry ``count`` (layers of that shape)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="banana-hvx-gemm-") as tmp:
        for (m, n, k), count in sorted(nano_dit_gemm_shapes().items()):
            for a_dtype, prepacked in variants:
                row = measure(m, n, k, a_dtype, prepacked, Path(tmp))
                row["count"] = count
                logger.info("%s", row)
                rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    """Table plus the MAC-weighted totals per variant."""
    head = ("| M | N | K | layers | A | W | hot-loop mul instrs | hot-loop packets | hot-loop MAC share | "
            "executed mul instrs | executed packets | kernel MAC share | useful MACs | MACs/packet | exact |")
    out = [head, "|" + "---|" * 15]
    for r in rows:
        out.append(
            f"| {r['M']} | {r['N']} | {r['K']} | {r['count']} | {r['a_dtype']} | "
            f"{'prepacked' if r['prepacked'] else 'repack in kernel'} | {r['hot_loop_mul_instrs']}"
            f"{' (no loop)' if r['hot_loop_unrolled'] else ''} | "
            f"{r['hot_loop_packets']} | {r['hot_loop_mac_share']:.0%} | {r['executed_mul_instrs']:.0f} | "
            f"{r['executed_packets']:.0f} | {r['kernel_mac_share']:.0%} | {r['useful_mac_fraction']:.0%} | "
            f"{r['macs_per_packet']:.1f} | {'yes' if r['exact'] else 'NO'} |")
    out.append("")
    for a_dtype, prepacked in sorted({(r["a_dtype"], r["prepacked"]) for r in rows}):
        sel = [r for r in rows if r["a_dtype"] == a_dtype and r["prepacked"] == prepacked]
        macs = sum(r["M"] * r["N"] * r["K"] * r["count"] for r in sel)
        packets = sum(r["executed_packets"] * r["count"] for r in sel)
        issued = sum(r["M"] * r["N"] * r["K"] * r["count"] / r["useful_mac_fraction"] for r in sel)
        out.append(f"- {a_dtype}, {'prepacked W' if prepacked else 'W repacked in kernel'}: whole model "
                   f"{macs} MACs in {packets:.0f} executed packets ({macs / packets:.1f} MACs/packet); "
                   f"{macs / issued:.0%} of vector MACs useful; all exact: {all(r['exact'] for r in sel)}")
    return "\n".join(out) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write(to_markdown(report()))


if __name__ == "__main__":
    main()
