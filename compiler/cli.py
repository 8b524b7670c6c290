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
    )
    manifest = result.manifest
    total = sum(f["bytes"] for f in manifest["files"])
    print(f"artifact: {result.artifact_dir.resolve()}")
    print(f"  soc {manifest['soc']['id']} ({manifest['soc']['name']}), backend {manifest['backend']}, "
          f"{len(manifest['files'])} files, {total / 1e6:.2f} MB")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings_s.items()))
    if result.verify is not None:
        _print_verify(result.verify)
    return 0


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
    p.add_argument("--rtol", type=float, default=1e-4, help="max relative error for --verify")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("verify", help="check an artifact's checksums, run it and compare with onnxruntime")
    p.add_argument("artifact", type=Path)
    p.add_argument("--inputs", type=Path, help=".npz with one array per model input (default: seeded random)")
    p.add_argument("--model", type=Path, help="the original model, if it moved since compilation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.set_defaults(func=_cmd_verify)

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
