"""`banana` command line: a thin layer over the Python API that owns printing and exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from banana.compiler.errors import BananaError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2: the same contract as every other bad input."""
        self.exit(2, f"banana: error: {self.prog}: {message}\n")


def _stage_printer(stage: str) -> None:
    """Progress for people at a terminal; pipes and CI logs keep stderr for the one error line."""
    if sys.stderr.isatty():
        print(f"[banana] {stage} ...", file=sys.stderr, flush=True)


def _cmd_compile(args: argparse.Namespace) -> int:
    from banana.compiler.frontend import parse_shape_override
    from banana.compiler.pipeline import compile_model

    shapes = dict(parse_shape_override(text) for text in args.shape)
    result = compile_model(
        args.model,
        backend=args.backend,
        soc=args.soc,
        out=args.output,
        shapes=shapes,
        verify=args.verify,
        rtol=args.rtol,
        on_stage=_stage_printer,
        tuning_db=args.tuning_db,
        allow_float_fallback=args.allow_float_fallback,
        kernel_variant=args.kernel_variant,
    )
    manifest = result.manifest
    total = sum(f["bytes"] for f in manifest["files"])
    print(f"artifact: {result.artifact_dir.resolve()}")
    print(f"  soc {manifest['soc']['id']} ({manifest['soc']['name']}), backend {manifest['backend']}, "
          f"{len(manifest['files'])} files, {total / 1e6:.2f} MB")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings_s.items()))
    if "integer" in manifest:
        layers = manifest["integer"]["layers"]
        fallbacks = manifest["integer"]["float_fallbacks"]
        kernels = sorted({x["kernel"] for x in layers if x["epilogue"] != "float-fallback"})
        print(f"  integer: {len(layers) - len(fallbacks)} quantized layers on {', '.join(kernels) or '-'} "
              f"(precision {manifest['precision']})"
              + (f"; {len(fallbacks)} in float: {', '.join(fallbacks)}" if fallbacks else ""))
    if result.tuning is not None:
        t = result.tuning
        if not t.consulted:
            print(f"  tuning: backend {manifest['backend']} does not apply tuning records yet: all tasks untuned")
        else:
            print(f"  tuning: {len(t.tuned)} tasks from {t.database}, {len(t.untuned)} untuned (default rules)"
                  + (f": {', '.join(sorted(t.untuned))}" if t.untuned else ""))
    if result.verify is not None:
        _print_verify(result.verify)
    return 0


class _TuneBar:
    """Progress bar on stderr (trials done, best latency of the tuned tasks, ETA); one line per
    update at a terminal, every tenth of the budget otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_decile = -1

    def __call__(self, p: object) -> None:
        from banana.tuning import TuneProgress

        assert isinstance(p, TuneProgress)
        total = max(p.trials_total, 1)
        width = 30
        filled = int(width * p.trials_done / total)
        best = f"{p.best_latency_ms:.3f} ms" if p.best_latency_ms is not None else "-"
        eta = f"{p.eta_s / 60:.1f} min" if p.eta_s is not None else "?"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {p.trials_done}/{p.trials_total} trials, "
                f"best {best}, ETA {eta}, rejected {p.rejected} {p.task[:40]}")
        if self.tty:
            print("\r" + line.ljust(120), end="", file=sys.stderr, flush=True)
        elif 10 * p.trials_done // total != self.last_decile:
            self.last_decile = 10 * p.trials_done // total
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _cmd_tune(args: argparse.Namespace) -> int:
    from banana.compiler.frontend import parse_shape_override
    from banana.tuning import tune_model

    bar = _TuneBar()
    try:
        report = tune_model(args.model, backend=args.backend, soc=args.soc, trials=args.trials, runner=args.runner,
                            db_root=args.db, shapes=dict(parse_shape_override(t) for t in args.shape),
                            seed=args.seed, on_progress=bar)
    finally:
        bar.close()
    print(f"tuning database: {report.database_dir.resolve()} (runner {report.runner})")
    print(f"  {report.trials_run} trials stored, {report.rejected} rejected as wrong, {report.failed} failed, "
          f"{report.elapsed_s:.0f} s ({report.trials_per_minute:.1f} trials/min)")
    for t in report.tasks:
        best = f"{t.best_ms:.4f} ms" if t.best_ms is not None else "-"
        print(f"  {t.name[:60]:60} x{t.weight:<2} {t.trials_in_db:4}/{t.trials_planned:<4} best {best}")
    print(f"  untuned (default rules): {len(report.untuned_tasks)} tasks")
    for k in report.knobs:  # banana's own kernels: knob search, best vs the default knobs
        timing = (f"default {k.default_ms:.4f} ms, best {k.best_ms:.4f} ms" if k.default_ms is not None
                  and k.best_ms is not None else "not measured")
        chosen = "default" if not k.best else ",".join(f"{n}={v}" for n, v in sorted(k.best.items()))
        print(f"  {k.kind} knobs {_spec_label(k.key)[:48]:48} {k.measured_total:3} candidates "
              f"({k.measured_now} measured now, {k.rejected} rejected), "
              f"{timing}, kept {chosen}")
    return 0


def _spec_label(key: str) -> str:
    """A knob store key (kind + canonical JSON spec) as ``name=value`` pairs of its spec's numbers."""
    import json

    try:
        spec = json.loads(key.split(":", 1)[1]) if ":" in key else json.loads(key)
    except ValueError:
        return key
    if not isinstance(spec, dict):
        return key
    first = ("m", "n", "k", "q_len", "kv_len", "q_heads", "kv_heads", "head_dim")
    names = [n for n in first if n in spec] + sorted(n for n in spec if n not in first)
    return " ".join(f"{n}={spec[n]}" for n in names if isinstance(spec[n], int) and not isinstance(spec[n], bool))


def _print_verify(report: object) -> None:
    from banana.compiler.verify import VerifyReport

    assert isinstance(report, VerifyReport)
    if not report.executed:
        print(f"verify: NOT EXECUTED ({report.backend}): {report.note}")
        return
    print(f"verify: {report.backend} via {report.executor} vs onnxruntime (rtol {report.rtol:g}), "
          f"run {report.run_s:.2f}s")
    for c in report.comparisons:
        status = "ok" if c.ok else "FAIL"
        print(f"  {c.name}: max abs {c.max_abs:.3e}, max rel {c.max_rel:.3e}  {status}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from banana.compiler.artifact import Artifact
    from banana.compiler.verify import load_inputs, verify_artifact

    artifact = Artifact.open(args.artifact)
    inputs = load_inputs(args.inputs, artifact.inputs) if args.inputs else None
    report = verify_artifact(artifact, inputs=inputs, seed=args.seed, rtol=args.rtol, model_path=args.model)
    print(f"artifact: {Path(args.artifact).resolve()} (checksums ok)")
    _print_verify(report)
    report.raise_on_failure()
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from banana.compiler.report import measure_artifact, repredict

    measured = measure_artifact(args.artifact, args.measure) if args.measure else None
    out_dir = args.output or (args.artifact if args.soc is None else None)
    report = repredict(args.artifact, args.soc, target_ms=args.target_ms, target_fps=args.target_fps,
                       out_dir=None)
    if measured is not None:
        report["measured"] = measured
    if out_dir is not None and out_dir == args.artifact:
        out_dir = Path(args.artifact) / "reports"  # the artifact's own files stay checksummed
    from banana.compiler.report import write_report

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_report(report, Path(out_dir))
    lat = report["latency"]
    print(f"report: {report['soc']['id']} ({report['soc']['name']}), backend {report['backend']} [PREDICTED]")
    for key in ("per_step", "per_image"):
        r = lat[key]
        print(f"  {key}: {r['predicted_ms']:.3f} ms predicted (range {r['low_ms']:.3f}-{r['high_ms']:.3f}), "
              f"physical bound {r['bound_ms']:.3f} ms")
    if measured is not None:
        where = measured.get("rpc", "host")
        print(f"  MEASURED on {where}: {measured['latency_ms']:.3f} ms per call (median of {measured['repeats']}, "
              f"min {measured['latency_min_ms']:.3f}); predicted per step {lat['per_step']['predicted_ms']:.3f} ms")
    for name, t in report["targets"].items():
        print(f"  {name}: physically possible {t['physically_possible']}, predicted feasible {t['predicted_feasible']}")
    if args.dit_table:
        for row in report["dit_projection"]["rows"]:
            c = row.get("claims", {})
            print(f"  {row['config']} {row['soc']:7} {row['backend']:8} {row['plan']} {row['resolution']:>4}: bound "
                  f"{row['bound_ms_per_step']:.1f} ms/step, predicted "
                  f"{row['predicted_ms_per_image'] or float('nan'):.0f} ms/image; 30fps@512 possible "
                  f"{c.get('30fps_at_512_physically_possible')}, <500ms possible "
                  f"{c.get('sub_500ms_physically_possible')}")
    if out_dir is not None:
        print(f"  written: {Path(out_dir).resolve()}/report.json, report.md, report.html")
    return 0


def _cmd_socs(args: argparse.Namespace) -> int:
    from banana.targets.soc import list_socs, load_soc

    for soc_id in list_socs():
        soc = load_soc(soc_id)
        print(f"{soc.id:8} {soc.name}  (aliases: {', '.join(soc.aliases)})")
    return 0


def _cmd_export_reference(args: argparse.Namespace) -> int:
    from banana.compiler.zoo import build_reference, example_inputs, export_onnx

    model = build_reference(args.name)
    path = export_onnx(model, example_inputs(args.name), Path(args.output), opset=args.opset,
                       dynamo=not args.torchscript, external_data=args.external_data)
    print(f"exported: {path.resolve()}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from banana.compiler.quantize.api import quantize
    from banana.compiler.quantize.dqat import DQATConfig

    def progress(message: str) -> None:
        print(f"[banana] {message}", file=sys.stderr, flush=True)

    result = quantize(
        args.model, args.output, steps=args.steps, seed=args.seed, plan=args.plan, backend=args.backend,
        budget_bytes=args.budget_bytes, max_avg_bits=args.max_avg_bits, block=args.block, method=args.method,
        calibration_seeds=range(1000, 1000 + args.calibration_seeds),
        dqat=DQATConfig(iterations=args.iterations, seed=args.seed), on_progress=progress,
    )
    plan, size = result.plan, result.plan["size"]
    print(f"quantized: {Path(result.out_dir).resolve()}")
    print(f"  {len(plan['layers'])} layers, {size['avg_weight_bits']:.2f} bits/weight, {size['model_bytes']} bytes")
    print(f"  PTQ  PSNR {result.ptq_fidelity.psnr_db:.2f} dB, SSIM {result.ptq_fidelity.ssim:.4f}")
    print(f"  DQAT PSNR {result.fidelity.psnr_db:.2f} dB, SSIM {result.fidelity.ssim:.4f} "
          f"({plan['steps']} steps, {len(plan['fidelity']['seeds'])} seeds)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from banana.tuning.sweep import SweepConfig, run_sweep
    from banana.tuning.sweep_pareto import table

    def progress(t: object) -> None:
        from optuna.trial import FrozenTrial

        assert isinstance(t, FrozenTrial)
        if t.values:
            print(f"[banana] trial {t.number}: {t.params} -> {t.values[0]:.3f} ms/image, {t.values[1]:.2f} dB, "
                  f"{int(t.values[2])} bytes", file=sys.stderr, flush=True)
        else:
            print(f"[banana] trial {t.number} {t.state.name}: {t.user_attrs.get('error', '')}", file=sys.stderr)

    config = SweepConfig(model=args.model, backend=args.backend, soc=args.soc, trials=args.trials, out=args.out,
                         storage=args.storage, study_name=args.study_name, workers=args.workers, space=args.space,
                         seed=args.seed, cache_dir=args.cache, latency=args.latency,
                         fidelity_reference=args.fidelity_reference)
    result = run_sweep(config, on_trial=progress)
    doc, plan = result.document, result.plan
    n = doc["trials"]
    print(f"study {plan.study_name} in {doc['storage']}: {n['complete']} complete, {n['failed']} failed, "
          f"{n['running']} running elsewhere of {n['requested']} ({result.elapsed_s:.0f} s)")
    print(f"Pareto front ({len(doc['front'])} of {n['complete']}; latency per image, fidelity vs float, bytes):")
    print(table(doc["front"]), end="")
    print(f"written: {Path(plan.out) / 'pareto.json'}, pareto.md, pareto.png")
    bad = [c for c in result.worker_exit_codes if c != 0]
    if bad:
        print(f"banana: error: {len(bad)} worker process(es) exited with codes {bad}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from banana.targets.backends import backend_names

    parser = _Parser(prog="banana", description="Compile few-step diffusion denoisers for phone SoCs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compile", help="compile a model into a verified artifact directory")
    p.add_argument("model", help="ONNX file, or zoo:NAME for a bundled reference (zoo:nano-dit, ...)")
    p.add_argument("--soc", help="SoC id or alias (SM8650, 8gen3, ...); see `banana socs`")
    p.add_argument("--backend", required=True, choices=backend_names())
    p.add_argument("-o", "--output", required=True, type=Path, help="artifact directory (replaced atomically)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="static shape for a model input (repeatable)")
    p.add_argument("--verify", action="store_true", help="run the artifact and compare with onnxruntime")
    p.add_argument("--rtol", type=float, help="max relative error for --verify (default 1e-4; 1e-2 for QDQ models)")
    p.add_argument("--tuning-db", type=Path, metavar="DB", help="apply records of `banana tune --db DB`")
    p.add_argument("--allow-float-fallback", action="store_true",
                   help="QDQ models: run quantized layers the backend cannot run in integer arithmetic in float "
                        "(listed in the manifest) instead of failing")
    p.add_argument("--kernel-variant", metavar="NAME",
                   help="adreno QDQ models: weight-only kernel variant fp32 (default; verifiable on PoCL), "
                        "fp16 or fp16-acc32 (half activations; need a device with cl_khr_fp16)")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("tune", help="autotune a model's tasks (MetaSchedule) into a tuning database")
    p.add_argument("model", help="ONNX file, or zoo:NAME for a bundled reference")
    p.add_argument("--soc", help="SoC id or alias (not needed for --backend host)")
    p.add_argument("--backend", required=True, choices=backend_names())
    p.add_argument("--trials", type=int, required=True, help="total trial budget over the model's tasks")
    p.add_argument("--runner", default="local", help="local | predict | rpc://HOST:PORT/KEY (default local)")
    p.add_argument("--db", type=Path, default=Path("tuning-db"), help="database root (default ./tuning-db)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("verify", help="check an artifact's checksums, run it and compare with onnxruntime")
    p.add_argument("artifact", type=Path)
    p.add_argument("--inputs", type=Path, help=".npz with one array per model input (default: seeded random)")
    p.add_argument("--model", type=Path, help="the original model, if it moved since compilation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, help="max relative error (default 1e-4; 1e-2 for QDQ models)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("report", help="latency/memory/thermal report of an artifact (re-predict for another SoC)")
    p.add_argument("artifact", type=Path)
    p.add_argument("--soc", help="re-predict for this SoC without recompiling")
    p.add_argument("--target-ms", type=float, help="judge a per-image latency target")
    p.add_argument("--target-fps", type=float, help="judge a frame-rate target")
    p.add_argument("--measure", nargs="?", const="host", metavar="WHERE",
                   help="measure latency: 'host' (default; host artifacts, here) or rpc://HOST:PORT/KEY (a device "
                        "behind a TVM RPC tracker; host/cpu artifacts)")
    p.add_argument("--dit-table", action="store_true", help="print the by-shape DiT table (1.8b, INT8/INT4)")
    p.add_argument("-o", "--output", type=Path, help="write report.json/.md/.html here")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("quantize", help="DQAT: quantize a denoiser to QDQ ONNX + plan.json (per-step scales)")
    p.add_argument("model", help="zoo:NAME (a torch reference denoiser: zoo:nano-dit, ...)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory (replaced atomically)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps the model ships with (1-8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan", default="search", help="search (mixed precision) or w8a8, w4a8, w8a16, w4a16, ...")
    p.add_argument("--backend", choices=["host", "cpu", "adreno", "hexagon"], help="restrict to what it runs")
    p.add_argument("--budget-bytes", type=int, help="search: model bytes + conversion bytes budget")
    p.add_argument("--max-avg-bits", type=float, help="search: max average bits per weight")
    p.add_argument("--block", type=int, default=0, help="INT4 block size (0 = per channel)")
    p.add_argument("--method", default="mse", choices=["minmax", "percentile", "mse"], help="PTQ range init")
    p.add_argument("--iterations", type=int, default=300, help="DQAT iterations")
    p.add_argument("--calibration-seeds", type=int, default=64, help="number of calibration seeds")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("sweep", help="multi-objective Optuna study over pipeline choices (Pareto front)")
    p.add_argument("model", help="zoo:NAME (quantizable) or an ONNX file (fp32 only)")
    p.add_argument("--soc", help="SoC id or alias (not needed for --backend host)")
    p.add_argument("--backend", required=True, choices=backend_names())
    p.add_argument("--trials", type=int, required=True, help="trials in the study in total, over all workers")
    p.add_argument("--out", type=Path, default=Path("sweep"), help="pareto.json/.md/.png (+ sweep.db) here")
    p.add_argument("--storage", help="sqlite:///PATH (default OUT/sweep.db) or postgresql://USER@HOST:PORT/DB")
    p.add_argument("--study-name", help="join this study (default: derived from model, SoC, backend, space)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--space", help='JSON (inline or file) restricting dimensions, e.g. \'{"precision": ["fp32"]}\'')
    p.add_argument("--latency", default="predicted", choices=["predicted", "measured"],
                   help="measured: time host artifacts here")
    p.add_argument("--fidelity-reference", default="max-steps", choices=["max-steps", "same-steps"],
                   help="PSNR vs the float model at the most steps of the space (default) or at the trial's")
    p.add_argument("--cache", type=Path, help="content-addressed cache of plans/artifacts (default .cache/sweep)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("socs", help="list the SoCs in the registry")
    p.set_defaults(func=_cmd_socs)

    p = sub.add_parser("export-reference", help="export a bundled reference denoiser to ONNX")
    p.add_argument("name", help="nano-dit, nano-dit-random, nano-unet, small-dit")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--torchscript", action="store_true", help="use the TorchScript exporter")
    p.add_argument("--external-data", action="store_true", help="store weights in a side file")
    p.set_defaults(func=_cmd_export_reference)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except BananaError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"banana: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("banana: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
