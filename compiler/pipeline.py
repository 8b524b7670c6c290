"""The one definition of banana's compile pipeline, used by the CLI, the Python API and tests.

    import     ONNX file (or torch module, or a bundled reference) -> validated Relax + weights
    quantize   separate command (banana.compiler.quantize.api.quantize / `banana quantize`): DQAT ->
               QDQ ONNX + plan.json; compile takes its QDQ graphs: quantized layers are cut out
               before import (passes.integer_match) and lowered after fusion to integer kernels
    fuse       GQA/MHA attention -> one call of banana.kernels' fused kernel per site (every backend);
               quantized layers -> int GEMM + requant epilogue (passes.integer)
    build      the backend lowers, schedules (tuning records from `banana tune` first, if given)
               and generates code for the SoC
    report     predicted latency (roofline per kernel), memory, thermal: report.json/.md/.html
    emit       library + weights + manifest, written atomically
    verify     optional: run the artifact here and compare with onnxruntime on the original model
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from banana.compiler.artifact import WEIGHTS, Artifact, finalize_manifest, save_weights, staged_directory
from banana.compiler.frontend.importer import ImportedModel
from banana.compiler.verify import VerifyReport, verify_artifact
from banana.targets.backends import get_backend
from banana.targets.soc import Soc

logger = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"


@dataclass
class CompileResult:
    artifact_dir: Path
    manifest: dict[str, Any]
    timings_s: dict[str, float]
    verify: VerifyReport | None = None
    tuning: Any = None  # banana.tuning.TuningApplied when compiled with a tuning database


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)
    on_stage: Callable[[str], None] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        logger.info("stage %s: %.2f s", name, self.timings[name])


def resolve_soc(soc: str | None, backend: str) -> Soc:
    """The host backend always describes this machine; phone backends need a registry SoC."""
    from banana.compiler.errors import BadConfigError
    from banana.targets.host import host_soc
    from banana.targets.soc import load_soc

    if backend == "host":
        return host_soc()
    if not soc:
        raise BadConfigError(f"--soc is required for backend '{backend}'")
    return load_soc(soc)


def export_torch_module(module: Any, example_inputs: dict[str, Any] | None, cache_dir: Path | None = None) -> Path:
    """A torch module goes through banana's exporter into a content-addressed cache file.

    The ONNX file outlives the compile so ``banana verify`` can later rerun onnxruntime on it.
    """
    import shutil
    import tempfile

    from banana.compiler.errors import BadConfigError
    from banana.compiler.frontend.onnx_loading import sha256_file
    from banana.compiler.zoo import export_onnx

    if not example_inputs:
        raise BadConfigError("a torch module needs example_inputs (name -> array) to fix its input shapes")
    root = (cache_dir or default_cache_dir()) / "torch"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    try:
        exported = export_onnx(module, example_inputs, staging / "model.onnx", input_names=tuple(example_inputs))
        final = root / sha256_file(exported)[:16]
        if not final.exists():
            staging.rename(final)
        return final / "model.onnx"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model(
    model: Any, cache_dir: Path | None = None, example_inputs: dict[str, Any] | None = None
) -> tuple[Path, str | None]:
    """A path, ``zoo:NAME`` for a bundled reference denoiser, or a torch module (exported first)."""
    if not isinstance(model, str | Path):
        return export_torch_module(model, example_inputs, cache_dir), None
    text = str(model)
    if text.startswith(ZOO_PREFIX):
        from banana.compiler.zoo import reference_onnx

        name = text[len(ZOO_PREFIX) :]
        directory = cache_dir or default_cache_dir() / "zoo"
        return reference_onnx(name, directory), name
    return Path(model), None


def default_cache_dir() -> Path:
    import os

    env = os.environ.get("BANANA_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache"
    return Path.home() / ".cache" / "banana"


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy", "torch", "banana"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _manifest(model: ImportedModel, soc: Soc, backend: str, build: Any, reference: str | None,
              timings: dict[str, float]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "banana_version": tool_versions().get("banana", "0"),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {
            "path": str(model.source_path),
            "sha256": model.sha256,
            "format": "onnx",
            "opset": model.opset,
            "producer": model.producer,
            "reference": reference,
        },
        "inputs": [spec.to_json() for spec in model.inputs],
        "outputs": [spec.to_json() for spec in model.outputs],
        "soc": {"id": soc.id, "name": soc.name},
        "backend": backend,
        "target": build.target,
        "precision": "fp32",
        "entry": {"function": "main", "calling_convention": "inputs then weights", "library": build.library},
        "weights": {
            "file": WEIGHTS,
            "format": "tvm-param-dict",
            "count": len(model.weights),
            "bytes": model.weight_bytes,
            "names": model.weight_names,
        },
        "tools": tool_versions(),
        "run": {"executor": build.executor, **build.run},
        "build": build.facts,
        "timings_s": dict(timings),
    }


def compile_model(
    model: str | Path | Any,
    *,
    backend: str,
    out: Path | str,
    soc: str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    verify: bool = False,
    rtol: float | None = None,
    on_stage: Callable[[str], None] | None = None,
    tuning_db: Path | str | None = None,
    example_inputs: dict[str, Any] | None = None,
    fuse: bool = True,
    allow_float_fallback: bool = False,
    integer_taps: bool = False,
    kernel_variant: str | None = None,
) -> CompileResult:
    """Run the pipeline; ``out`` appears only if every stage (and verification, if asked) passes.

    ``model``: an ONNX path, ``zoo:NAME``, or a ``torch.nn.Module`` together with ``example_inputs``.

    ``tuning_db``: a ``banana tune`` database root; its records for this SoC and backend replace
    the default schedules of the tasks they cover (the manifest lists tuned and untuned tasks).

    ``fuse=False`` skips the fuse stage (TVM's unfused lowering everywhere): ``banana sweep``
    measures what fusion is worth.

    QDQ models: quantized layers run as integer kernels (banana.compiler.passes.integer); one
    that cannot is an error naming it unless ``allow_float_fallback`` (then listed in the
    manifest). ``integer_taps``: ``main`` also returns every layer's integer tensors (for the
    bit-exact check against banana.compiler.quantize.integer_reference; not for shipping).
    ``kernel_variant``: the backend's quantized-kernel variant (adreno: ``fp32`` accumulation, the
    default and the one PoCL can verify, ``fp16`` or ``fp16-acc32``); other backends have none.
    """
    from banana.tuning.apply import apply_tuning_database

    timer = _Timer(on_stage=on_stage)
    backend_impl = get_backend(backend)
    target_soc = resolve_soc(soc, backend)
    out = Path(out)
    with timer.stage("import"):
        path, reference = resolve_model(model, example_inputs=example_inputs)
        from banana.compiler.passes.integer_stage import import_with_integer_regions

        imported, integer_plan = import_with_integer_regions(path, shapes, backend,
                                                             allow_float_fallback=allow_float_fallback,
                                                             variant=kernel_variant)
    with timer.stage("fuse"):
        from banana.compiler.passes.stage import fuse_stage

        if fuse:
            from banana.tuning.knobs import load_tuned_knobs

            tuned_knobs = load_tuned_knobs(tuning_db, target_soc.id, backend)  # {} without knobs
            fusion = fuse_stage(imported.mod, backend, backend_impl.target(target_soc),
                                params=dict(zip(imported.weight_names, imported.weights, strict=True)),
                                knobs=tuned_knobs)
        else:
            from banana.compiler.passes.attention import AttentionFusion

            fusion = AttentionFusion(mod=imported.mod)
        imported.mod = fusion.mod
        from banana.compiler.passes.integer_stage import integer_stage, precision_label

        integer = integer_stage(imported, integer_plan, backend_impl.target(target_soc), taps=integer_taps)
    with staged_directory(out) as staging:
        # the report re-lowers the module to analyse it: inside the same tuning context as the build,
        # so a tuned build is reported with its tuned kernels
        with apply_tuning_database(tuning_db, target_soc.id, backend) as tuning:
            with timer.stage("build"):
                build = backend_impl.build(imported, target_soc, staging)
                from banana.tuning.apply import record_attention_kernels

                record_attention_kernels(tuning, fusion.sites, set(tuned_knobs) if fuse else set())
            with timer.stage("report"):  # predicted latency/memory/thermal; checksummed with the rest
                from banana.compiler.report import report_stage

                report_stage(imported, target_soc, backend, build.target, staging, reference=reference)
        with timer.stage("emit"):
            save_weights(imported.weights, staging / WEIGHTS)
            manifest = _manifest(imported, target_soc, backend, build, reference, timer.timings)
            manifest["attention"] = fusion.to_json()
            manifest["precision"] = precision_label(integer)
            if integer is not None or integer_plan.fallbacks:
                manifest["integer"] = integer_plan.to_json(integer)
                if integer is not None and integer_taps:
                    manifest["integer"]["taps"] = [{"layer": t.region, "kind": t.kind} for t in integer.taps]
            if tuning is not None:
                manifest["tuning"] = tuning.to_json()
            manifest = finalize_manifest(staging, manifest)
        report = None
        if verify:
            with timer.stage("verify"):
                report = verify_artifact(Artifact.open(staging), rtol=rtol, model_path=path)
                report.raise_on_failure()
    return CompileResult(artifact_dir=out, manifest=manifest, timings_s=timer.timings, verify=report,
                         tuning=tuning)
