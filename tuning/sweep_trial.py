"""One sweep trial: the real pipeline pieces for one configuration, and its three objectives.

    quantize   (zoo models, precision != fp32) ``banana quantize`` for the sampled plan, steps,
               DQAT iterations and calibration seeds -> QDQ graphs + plan.json (fidelity inside)
    tune       (tuning_trials > 0) ``banana tune``'s driver with the predict runner, into a
               private database for this model/fusion/budget
    compile    ``banana compile`` (fuse on or off, tuning records applied) -> artifact directory
    objectives latency_ms per image = per-step latency x steps (predicted from the SoC model, with
               tuned schedules when tuned; or measured here for --latency measured on host),
               psnr_db of the final samples (the ONNX graphs compile takes, in onnxruntime) vs
               the float model at the same seeds (:mod:`banana.tuning.sweep_fidelity`),
               artifact_bytes = library + weights, what ships

Every expensive result lives in a content-addressed cache directory (key = the inputs that decide
it: file hashes and options, never the choices that do not, e.g. the float model's artifact does
not depend on the number of steps). Entries are built in a private staging directory and renamed
into place, so concurrent workers (even on machines sharing the cache over a network file system)
never see half an entry; a lock file keeps workers on one machine from building the same entry twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.errors import BadConfigError
from banana.tuning.sweep_space import parse_precision

logger = logging.getLogger(__name__)

PSNR_CEILING_DB = 99.0  # identical images have infinite PSNR; the quantizer's sensitivity uses the same cap
KEY_FILE = "sweep-key.json"
LATENCY_SOURCES = ("predicted", "measured")


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one sweep shares."""

    model: str
    backend: str
    soc: str | None
    cache_dir: Path
    seed: int = 0
    latency: str = "predicted"
    tune_runner: str = "predict"
    reference_steps: int | None = None  # fidelity reference: float model at this many steps (None: the trial's)


@dataclass
class TrialOutcome:
    latency_ms: float
    psnr_db: float
    artifact_bytes: int
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> tuple[float, float, float]:
        return self.latency_ms, self.psnr_db, float(self.artifact_bytes)


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(root: Path, kind: str, key: dict[str, Any], build: Callable[[Path], Any]) -> tuple[Path, bool]:
    """``root/kind/<digest of key>``, built by ``build(out)`` on a miss; returns (path, was_cached)."""
    directory = Path(root) / kind
    directory.mkdir(parents=True, exist_ok=True)
    digest = _digest(key)
    final = directory / digest
    if final.is_dir():
        return final, True
    with _file_lock(directory / f".{digest}.lock"):
        if final.is_dir():
            return final, True
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}.staging-", dir=directory))
        try:
            built = staging / "entry"
            build(built)
            built.mkdir(exist_ok=True)
            (built / KEY_FILE).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
            try:
                os.rename(built, final)  # atomic; fails if another machine got there first
            except OSError:
                if not final.is_dir():
                    raise
                logger.info("cache %s/%s: built concurrently elsewhere, keeping that copy", kind, digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final, False


def _sha256(path: Path) -> str:
    from banana.compiler.frontend.onnx_loading import sha256_file

    return sha256_file(path)


def _float_onnx(ctx: TrialContext) -> Path:
    from banana.compiler.pipeline import resolve_model

    path, _ = resolve_model(ctx.model)
    if not Path(path).is_file():
        raise BadConfigError(f"model {ctx.model}: no such file")
    return Path(path)


def _fp32_model_bytes(model: str) -> int:
    from banana.compiler.quantize.api import load_model

    net, _ = load_model(model)
    return 4 * sum(p.numel() for p in net.parameters())


def _quantized(ctx: TrialContext, params: dict[str, Any], attrs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """``banana quantize`` for this plan and step count (cached); returns (ONNX to compile, plan)."""
    from banana.compiler.quantize.api import quantize
    from banana.compiler.quantize.dqat import DQATConfig
    from banana.compiler.quantize.plan import PLAN_FILE, read_plan

    kind, fraction = parse_precision(params["precision"])
    steps, iterations, seeds = int(params["steps"]), int(params["dqat_iterations"]), int(params["calibration_seeds"])
    budget = int(fraction * _fp32_model_bytes(ctx.model)) if fraction is not None else None
    key = {"model": ctx.model, "model_sha256": _sha256(_float_onnx(ctx)), "plan": kind, "budget_bytes": budget,
           "steps": steps, "dqat_iterations": iterations, "calibration_seeds": seeds, "seed": ctx.seed,
           # only the mixed search depends on what the backend runs; uniform plans are shared by all backends
           "backend": ctx.backend if kind == "mixed" else None}

    def build(out: Path) -> None:
        quantize(ctx.model, out, steps=steps, seed=ctx.seed, plan="search" if kind == "mixed" else kind,
                 backend=key["backend"], budget_bytes=budget, dqat=DQATConfig(iterations=iterations, seed=ctx.seed),
                 calibration_seeds=range(1000, 1000 + seeds))

    start = time.perf_counter()
    directory, hit = cached(ctx.cache_dir, "quantized", key, build)
    attrs["quantized"] = str(directory)
    attrs["seconds_quantize"] = round(time.perf_counter() - start, 2)
    attrs["cached_quantize"] = hit
    # The step graphs share structure and weights and differ only in their activation-scale
    # constants, so step 0's graph stands for all of them in latency and bytes.
    return directory / "model.step0.onnx", read_plan(directory / PLAN_FILE)


def _as_built(ctx: TrialContext, onnx: Path, fuse: bool) -> Any:
    """The imported model exactly as ``compile_model`` hands it to the backend (import with integer
    regions, fuse stage if on, integer stage), so tuned tasks and the tuned-latency analysis see the
    same PrimFuncs the build does."""
    from banana.compiler.pipeline import resolve_soc
    from banana.targets.backends import get_backend

    soc = resolve_soc(ctx.soc, ctx.backend)
    target = get_backend(ctx.backend).target(soc)
    try:
        from banana.compiler.passes.integer_stage import import_with_integer_regions, integer_stage
    except ImportError:  # a pipeline without the integer stage
        from banana.compiler.frontend.importer import import_onnx

        imported, plan, integer_stage = import_onnx(onnx), None, None
    else:
        imported, plan = import_with_integer_regions(onnx, None, ctx.backend)
    if fuse:
        from banana.compiler.passes.stage import fuse_stage

        imported.mod = fuse_stage(imported.mod, ctx.backend, target,
                                  params=dict(zip(imported.weight_names, imported.weights, strict=True))).mod
    if integer_stage is not None:
        integer_stage(imported, plan, target)
    return imported


def _tuning_db(ctx: TrialContext, onnx: Path, params: dict[str, Any], attrs: dict[str, Any]) -> tuple[Path, str]:
    """A private MetaSchedule database for this model, fusion and budget (cached); (root, key digest)."""
    from banana.compiler.pipeline import resolve_soc
    from banana.targets.backends import get_backend
    from banana.tuning.runners import check_runner, parse_runner
    from banana.tuning.tune import tune_imported

    trials, fuse = int(params["tuning_trials"]), bool(params["fuse"])
    spec = parse_runner(ctx.tune_runner)
    check_runner(spec, ctx.backend)
    soc = resolve_soc(ctx.soc, ctx.backend)
    key = {"onnx_sha256": _sha256(onnx), "backend": ctx.backend, "soc": soc.id, "fuse": fuse, "trials": trials,
           "seed": ctx.seed, "runner": str(spec)}

    def build(out: Path) -> None:
        imported = _as_built(ctx, onnx, fuse)  # so the records match the build's tasks
        target = get_backend(ctx.backend).target(soc)
        tune_imported(imported, backend=ctx.backend, soc=soc, target=target, trials=trials, runner=spec,
                      db_root=out, seed=ctx.seed)

    start = time.perf_counter()
    directory, hit = cached(ctx.cache_dir, "tuning", key, build)
    attrs["tuning_db"] = str(directory)
    attrs["seconds_tune"] = round(time.perf_counter() - start, 2)
    attrs["cached_tune"] = hit
    return directory, _digest(key)


def _artifact(ctx: TrialContext, onnx: Path, fuse: bool, tuning: tuple[Path, str] | None,
              attrs: dict[str, Any]) -> Path:
    from banana.compiler.pipeline import compile_model, resolve_soc

    soc = resolve_soc(ctx.soc, ctx.backend)
    key = {"onnx_sha256": _sha256(onnx), "backend": ctx.backend, "soc": soc.id, "fuse": fuse,
           "tuning": tuning[1] if tuning else None}

    def build(out: Path) -> None:
        compile_model(onnx, backend=ctx.backend, soc=ctx.soc, out=out, fuse=fuse,
                      tuning_db=tuning[0] if tuning else None)

    start = time.perf_counter()
    directory, hit = cached(ctx.cache_dir, "artifacts", key, build)
    attrs["artifact"] = str(directory)
    attrs["seconds_compile"] = round(time.perf_counter() - start, 2)
    attrs["cached_compile"] = hit
    return directory


def _tuned_step_ms(ctx: TrialContext, artifact: Path, onnx: Path, fuse: bool, tuning_db: Path) -> float:
    """The report's per-step prediction, but of the tuned schedules: the pipeline's report stage
    analyses the module outside the tuning context, so its figure ignores the records."""
    from banana.compiler.pipeline import resolve_soc
    from banana.compiler.report import analysis_target, analyze_lowered, assemble, lower_for_analysis
    from banana.targets.backends import get_backend
    from banana.tuning.apply import apply_tuning_database

    soc = resolve_soc(ctx.soc, ctx.backend)
    target = get_backend(ctx.backend).target(soc)
    imported = _as_built(ctx, onnx, fuse)
    with apply_tuning_database(tuning_db, soc.id, ctx.backend):
        work = analyze_lowered(lower_for_analysis(imported.mod, analysis_target(ctx.backend, target, soc)))
    info = {"name": Path(onnx).stem, "sha256": imported.sha256, "params": 0,
            "weights_bytes": int(imported.weight_bytes)}
    report = assemble(work, soc, ctx.backend, model_info=info, steps=1)
    return float(report["latency"]["per_step"]["predicted_ms"])


def _step_latency(ctx: TrialContext, artifact: Path, onnx: Path, fuse: bool, tuning: tuple[Path, str] | None,
                  attrs: dict[str, Any]) -> float:
    """Milliseconds per denoiser call (cached per artifact: measuring twice would only add noise)."""
    from banana.compiler.report import REPORT_JSON, measure_host_artifact, read_report

    key = {"artifact": artifact.name, "latency": ctx.latency}

    def build(out: Path) -> None:
        if ctx.latency == "measured":
            m = measure_host_artifact(artifact)
            value, source = float(m["latency_ms"]), f"measured here (median of {m['repeats']})"
        elif tuning is not None:
            value, source = _tuned_step_ms(ctx, artifact, onnx, fuse, tuning[0]), "predicted (tuned schedules)"
        else:
            value = float(read_report(artifact / REPORT_JSON)["latency"]["per_step"]["predicted_ms"])
            source = "predicted (artifact report)"
        out.mkdir(parents=True)
        (out / "latency.json").write_text(json.dumps({"per_step_ms": value, "source": source}) + "\n")

    directory, _ = cached(ctx.cache_dir, "latency", key, build)
    data = json.loads((directory / "latency.json").read_text())
    attrs["latency_source"] = data["source"]
    return float(data["per_step_ms"])


def _fidelity(ctx: TrialContext, float_onnx: Path, graphs: list[Path], steps: int,
              attrs: dict[str, Any]) -> float:
    """PSNR (dB, capped) of ``graphs`` sampled at ``steps`` vs the float reference (cached)."""
    from banana.tuning.sweep_fidelity import FIDELITY_SEEDS, final_images, psnr_ssim, reference_images

    ref_steps = ctx.reference_steps or steps
    key = {"model": ctx.model, "float_sha256": _sha256(float_onnx), "graphs": [_sha256(g) for g in graphs],
           "steps": steps, "reference_steps": ref_steps, "seeds": list(FIDELITY_SEEDS)}

    def reference(n: int) -> np.ndarray:
        def build_reference(out: Path) -> None:
            out.mkdir(parents=True)
            np.save(out / "images.npy", reference_images(ctx.model, float_onnx, n), allow_pickle=False)

        ref_key = {"model": ctx.model, "float_sha256": key["float_sha256"], "steps": n, "seeds": key["seeds"]}
        directory, _ = cached(ctx.cache_dir, "reference", ref_key, build_reference)
        return np.load(directory / "images.npy", allow_pickle=False)

    def build(out: Path) -> None:
        images = final_images(ctx.model, graphs, steps)
        psnr, ssim = psnr_ssim(reference(ref_steps), images)
        same = psnr_ssim(reference(steps), images)
        out.mkdir(parents=True)
        (out / "fidelity.json").write_text(json.dumps({"psnr_db": min(psnr, PSNR_CEILING_DB), "ssim": ssim,
                                                       "psnr_same_steps_db": min(same[0], PSNR_CEILING_DB),
                                                       "reference_steps": ref_steps}) + "\n")

    start = time.perf_counter()
    directory, _ = cached(ctx.cache_dir, "fidelity", key, build)
    data = json.loads((directory / "fidelity.json").read_text())
    attrs["seconds_fidelity"] = round(time.perf_counter() - start, 2)
    attrs["ssim"] = float(data["ssim"])
    attrs["psnr_same_steps_db"] = float(data["psnr_same_steps_db"])
    attrs["fidelity_source"] = (f"onnxruntime on the compiled ONNX graphs, {steps} steps, vs float "
                                f"{'torch' if ctx.model.startswith('zoo:') else 'ONNX'} at {ref_steps} steps, "
                                f"{len(FIDELITY_SEEDS)} seeds")
    return float(data["psnr_db"])


def _shipped_bytes(artifact: Path) -> int:
    manifest = json.loads((artifact / "manifest.json").read_text())
    shipped = {manifest["entry"]["library"], manifest["weights"]["file"]}
    return int(sum(f["bytes"] for f in manifest["files"] if f["path"] in shipped))


def evaluate(ctx: TrialContext, params: dict[str, Any]) -> TrialOutcome:
    """Run one configuration through the pipeline; raises BananaError for configurations that cannot build."""
    if ctx.latency not in LATENCY_SOURCES:
        raise BadConfigError(f"--latency {ctx.latency}: expected {' or '.join(LATENCY_SOURCES)}")
    if ctx.latency == "measured" and ctx.backend != "host":
        raise BadConfigError(f"--latency measured: only the host backend runs here (not '{ctx.backend}')")
    start = time.perf_counter()
    attrs: dict[str, Any] = {}
    steps, fuse = int(params["steps"]), bool(params["fuse"])
    float_onnx = _float_onnx(ctx)
    if params["precision"] == "fp32":
        onnx, graphs = float_onnx, [float_onnx]
    else:
        onnx, plan = _quantized(ctx, params, attrs)
        graphs = [onnx.with_name(f"model.step{i}.onnx") for i in range(steps)]
        attrs["avg_weight_bits"] = float(plan["size"]["avg_weight_bits"])
        attrs["quantizer_psnr_db"] = float(plan["fidelity"]["psnr_db"])  # torch fake-quant, same steps
    psnr = _fidelity(ctx, float_onnx, graphs, steps, attrs)
    tuning = _tuning_db(ctx, onnx, params, attrs) if int(params["tuning_trials"]) > 0 else None
    artifact = _artifact(ctx, onnx, fuse, tuning, attrs)
    step_ms = _step_latency(ctx, artifact, onnx, fuse, tuning, attrs)
    attrs["latency_ms_per_step"] = step_ms
    attrs["seconds_total"] = round(time.perf_counter() - start, 2)
    return TrialOutcome(latency_ms=step_ms * steps, psnr_db=psnr, artifact_bytes=_shipped_bytes(artifact),
                        attrs=attrs)
