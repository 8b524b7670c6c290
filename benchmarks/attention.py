"""Fused GQA attention vs TVM's unfused lowering vs onnxruntime, side by side on this host.

8 q / 2 kv heads, head dim 64, fp32, transformers-style repeat_kv export (Unsqueeze/Expand/
Reshape -> MatMul -> Mul -> Softmax -> MatMul) at 256, 1024 and 4096 tokens. Each (variant,
tokens) runs in its own worker process so peak memory is that variant's alone: "peak_mb" is the
rise of the process' peak RSS (VmHWM, reset before the run) over its RSS just before the inputs
are created, i.e. inputs + outputs + every intermediate buffer.

    .venv/bin/python benchmarks/attention.py [--tokens 256 1024 4096] [--threads 2]

Last line: RESULT {"unfused_over_fused_4096": ..., "ort_over_fused_4096": ..., "fused_peak_mb_4096": ...}

``--kernel`` instead times the fused kernel alone (``attention_primfunc`` at its default knobs, host
target) at the small DiT's shapes and at 8 q / 2 kv heads x 64 at 1024 tokens, with 1 and 2 threads,
next to f32_gemm at 256x384x384 (the throughput banana's GEMM reaches on this host): ms and
GFLOP/s (4 * Hq * Lq * Lkv * D flops: Q K^T + P V). The 1-thread rows also give the per-thread CPU
time (``time.thread_time``), which is far less sensitive to other jobs on a shared machine.

    .venv/bin/python benchmarks/attention.py --kernel [--kernel-threads 1 2]

Last line: RESULT {"small_dit_self_gflops_2t": ..., "gemm_gflops_2t": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HQ, HKV, D = 8, 2, 64
SEED = 0


def make_model(path: Path, tokens: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = HQ // HKV
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "ax"),
        numpy_helper.from_array(np.array([1, HKV, n, 1, 1], np.int64), "eshape"),
        numpy_helper.from_array(np.array([1, HQ, tokens, D], np.int64), "rshape"),
        numpy_helper.from_array(np.array(D**-0.5, np.float32), "scale"),
    ]
    nodes = []
    for t in ("k", "v"):
        nodes += [
            helper.make_node("Unsqueeze", [t, "ax"], [f"{t}_u"]),
            helper.make_node("Expand", [f"{t}_u", "eshape"], [f"{t}_e"]),
            helper.make_node("Reshape", [f"{t}_e", "rshape"], [f"{t}_r"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["k_r"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["s1"]),
        helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v_r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "gqa",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, HQ, tokens, D]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, HKV, tokens, D]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, HKV, tokens, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, HQ, tokens, D])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="banana-bench")
    onnx.save_model(model, str(path))
    return path


def _inputs(tokens: int) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return [rng.standard_normal((1, h, tokens, D)).astype(np.float32) for h in (HQ, HKV, HKV)]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def worker(variant: str, tokens: int, threads: int, reps: int) -> dict[str, float]:
    """Build (if TVM), run ``reps`` timed runs after one warm-up; latency and peak memory."""
    with tempfile.TemporaryDirectory(prefix="banana-bench-attn-") as directory:
        model_path = make_model(Path(directory) / "gqa.onnx", tokens)
        return _measure(variant, model_path, tokens, threads, reps)


def _measure(variant: str, model_path: Path, tokens: int, threads: int, reps: int) -> dict[str, float]:
    if variant == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

        def run(args: list[np.ndarray]) -> np.ndarray:
            return session.run(None, dict(zip(("q", "k", "v"), args, strict=True)))[0]
    else:
        import tvm
        from tvm import relax

        from banana.compiler.frontend.importer import import_onnx
        from banana.compiler.lowering import compile_llvm
        from banana.compiler.passes import fuse_attention
        from banana.targets.host import host_target

        os.environ["TVM_NUM_THREADS"] = str(threads)
        mod = import_onnx(model_path).mod
        if variant == "fused":
            fusion = fuse_attention(mod, num_cores=threads)
            assert len(fusion.sites) == 1, fusion.to_json()
            mod = fusion.mod
        target = {**host_target(), "num-cores": threads}
        vm = relax.VirtualMachine(compile_llvm(mod, target), tvm.cpu())

        def run(args: list[np.ndarray]) -> np.ndarray:
            return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()

    base_kb = _rss_kb()
    _reset_peak()
    args = _inputs(tokens)
    out = run(args)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = run(args)
        times.append(time.perf_counter() - start)
    peak_kb = _hwm_kb()
    return {
        "latency_ms": 1e3 * float(np.median(times)),
        "peak_mb": (peak_kb - base_kb) / 1024.0,
        "checksum": float(np.abs(out).sum()),
    }


def _spawn(variant: str, tokens: int, threads: int, reps: int, timeout_s: float) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--worker", variant, str(tokens), "--threads", str(threads), "--reps", str(reps)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("WORKER "):
            return json.loads(line[len("WORKER "):])
    sys.stderr.write(proc.stderr[-2000:])
    return None


#: (name, batch, q heads, kv heads, q len, kv len, head dim) of the kernel-only mode
KERNEL_SPECS = (
    ("small-dit-self", 1, 8, 2, 256, 256, 48),
    ("small-dit-cross", 1, 8, 2, 256, 16, 48),
    ("gqa-1024x64", 1, 8, 2, 1024, 1024, 64),
)


def _time_lib(lib: object, args: list[object], flop: float, cpu_time: bool) -> dict[str, float]:
    import tvm

    fn = lib["main"]  # type: ignore[index]
    fn(*args)
    evaluator = lib.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=40)  # type: ignore[attr-defined]
    results = sorted(evaluator(*args).results)
    out = {"min_ms": 1e3 * results[0], "median_ms": 1e3 * results[len(results) // 2]}
    if cpu_time:  # one thread: the kernel runs on the calling thread
        best = float("inf")
        for _ in range(10):
            start = time.thread_time()
            for _ in range(5):
                fn(*args)
            best = min(best, (time.thread_time() - start) / 5)
        out["cpu_ms"] = 1e3 * best
    for key in list(out):
        out[key.replace("_ms", "_gflops")] = flop / out[key] / 1e6
    return out


def kernel_worker(threads: int) -> dict[str, dict[str, float]]:
    """Kernel-only timings in this process (``TVM_NUM_THREADS`` already set to ``threads``)."""
    import tvm

    from banana.kernels.attention import AttentionSpec, attention_primfunc, default_knobs
    from banana.kernels.f32_gemm import f32_gemm_primfunc
    from banana.targets.host import host_target

    target = tvm.target.Target({**host_target(), "num-cores": threads})
    rng = np.random.default_rng(SEED)
    out: dict[str, dict[str, float]] = {}
    for name, b, hq, hkv, lq, lkv, d in KERNEL_SPECS:
        spec = AttentionSpec(b, hq, hkv, lq, lkv, d, scale=d**-0.5)
        func = attention_primfunc(spec, default_knobs(spec, threads)).with_attr("global_symbol", "main")
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        arrays = [rng.standard_normal(shape).astype(np.float32)
                  for shape in ((b, hq, lq, d), (b, hkv, lkv, d), (b, hkv, lkv, d), (1, 1, 1, 1), (b, hq, lq, d))]
        out[name] = _time_lib(lib, [tvm.runtime.tensor(a) for a in arrays], 4.0 * b * hq * lq * lkv * d, threads == 1)
    m, n, k = 256, 384, 384
    func = f32_gemm_primfunc(m, n, k, target=target, transpose_b=False).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((m, k), (k, n), (m, n))]
    out["f32_gemm-256x384x384"] = _time_lib(lib, [tvm.runtime.tensor(a) for a in arrays], 2.0 * m * n * k,
                                            threads == 1)
    return out


def kernel_main(thread_counts: list[int], timeout_s: float) -> None:
    """Kernel-only mode: one worker process per thread count (the thread pool size is fixed at start)."""
    rows: dict[int, dict[str, dict[str, float]]] = {}
    print(f"{'kernel':<22} {'threads':>7} {'min ms':>8} {'median ms':>9} {'GFLOP/s':>8} {'cpu ms':>7}"
          f" {'cpu GFLOP/s':>11}")
    for threads in thread_counts:
        cmd = [sys.executable, __file__, "--kernel-worker", str(threads)]
        env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
        except subprocess.TimeoutExpired:
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("WORKER ")]
        if not lines:
            sys.stderr.write(proc.stderr[-2000:])
            continue
        rows[threads] = json.loads(lines[-1][len("WORKER "):])
        for name, r in rows[threads].items():
            cpu = f"{r['cpu_ms']:>7.3f} {r['cpu_gflops']:>11.1f}" if "cpu_ms" in r else f"{'':>7} {'':>11}"
            print(f"{name:<22} {threads:>7} {r['min_ms']:>8.3f} {r['median_ms']:>9.3f} {r['min_gflops']:>8.1f} {cpu}",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    top = rows.get(max(thread_counts), {})
    result = {
        "small_dit_self_gflops_2t": round(top["small-dit-self"]["min_gflops"], 1) if top else None,
        "gemm_gflops_2t": round(top["f32_gemm-256x384x384"]["min_gflops"], 1) if top else None,
    }
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--reps", type=int, default=0, help="timed runs (default: by size)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per worker")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    parser.add_argument("--kernel", action="store_true", help="time the fused kernel alone (see the docstring)")
    parser.add_argument("--kernel-threads", type=int, nargs="+", default=[1, 2], help="thread counts for --kernel")
    parser.add_argument("--kernel-worker", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.kernel_worker:
        print("WORKER " + json.dumps(kernel_worker(opts.kernel_worker)))
        return
    if opts.kernel:
        kernel_main(opts.kernel_threads, opts.timeout)
        return
    if opts.worker:
        variant, tokens = opts.worker[0], int(opts.worker[1])
        print("WORKER " + json.dumps(worker(variant, tokens, opts.threads, max(1, opts.reps))))
        return

    rows = {}
    print(f"GQA attention, {HQ} q / {HKV} kv heads, head dim {D}, fp32, {opts.threads} threads")
    print(f"{'tokens':>7} {'fused ms':>10} {'unfused ms':>11} {'ort ms':>9} {'unfused/fused':>14} {'ort/fused':>10}"
          f" {'fused MB':>9} {'unfused MB':>11} {'ort MB':>8}")
    for tokens in opts.tokens:
        reps = opts.reps or (10 if tokens <= 256 else 3 if tokens <= 1024 else 2)
        res = {v: _spawn(v, tokens, opts.threads, reps if v != "unfused" or tokens < 4096 else 1, opts.timeout)
               for v in ("fused", "unfused", "ort")}
        rows[tokens] = res

        def ms(v: str, res: dict = res) -> float:
            return res[v]["latency_ms"] if res[v] else float("nan")

        def mb(v: str, res: dict = res) -> float:
            return res[v]["peak_mb"] if res[v] else float("nan")

        print(f"{tokens:>7} {ms('fused'):>10.1f} {ms('unfused'):>11.1f} {ms('ort'):>9.1f}"
              f" {ms('unfused') / ms('fused'):>14.2f} {ms('ort') / ms('fused'):>10.2f}"
              f" {mb('fused'):>9.1f} {mb('unfused'):>11.1f} {mb('ort'):>8.1f}", flush=True)
    last = rows.get(4096) or rows[opts.tokens[-1]]

    def ratio(a: str) -> float | None:
        if not last.get(a) or not last.get("fused"):
            return None
        return round(last[a]["latency_ms"] / last["fused"]["latency_ms"], 3)

    result = {
        "unfused_over_fused_4096": ratio("unfused"),
        "ort_over_fused_4096": ratio("ort"),
        "fused_peak_mb_4096": round(last["fused"]["peak_mb"], 1) if last.get("fused") else None,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
