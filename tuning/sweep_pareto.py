"""The sweep's result: the Pareto front of the study as pareto.json (schema), pareto.md and pareto.png.

Objectives: ``latency_ms`` (per image, minimise), ``psnr_db`` (fidelity vs float, maximise),
``artifact_bytes`` (library + weights, minimise). A trial is on the front when no other complete
trial is at least as good in all three and better in one. Files are written beside each other
through temporary names and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import optuna
from optuna.trial import FrozenTrial, TrialState

from banana.compiler.errors import BadConfigError
from banana.tuning.sweep_space import DIMENSIONS

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "sweep_pareto.schema.json"
OBJECTIVES = (("latency_ms", "minimize"), ("psnr_db", "maximize"), ("artifact_bytes", "minimize"))
PARETO_JSON, PARETO_MD, PARETO_PNG = "pareto.json", "pareto.md", "pareto.png"


@cache
def pareto_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate_pareto(document: dict[str, Any], where: str) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(pareto_schema()).iter_errors(document))
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or "<root>"
        raise BadConfigError(f"{where}: field {field}: {error.message.splitlines()[0]}")


def _oriented(values: list[float]) -> tuple[float, ...]:
    """All objectives as 'smaller is better'."""
    return tuple(v if d == "minimize" else -v for v, (_, d) in zip(values, OBJECTIVES, strict=True))


def dominates(a: list[float], b: list[float]) -> bool:
    x, y = _oriented(a), _oriented(b)
    return all(p <= q for p, q in zip(x, y, strict=True)) and any(p < q for p, q in zip(x, y, strict=True))


def pareto_front(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials no other complete trial dominates, fastest first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    front = [t for t in done if not any(dominates(o.values, t.values) for o in done if o is not t)]
    return sorted(front, key=lambda t: (t.values[0], -t.values[1], t.values[2], t.number))


def front_rows(front: list[FrozenTrial]) -> list[dict[str, Any]]:
    return [{"number": t.number, "params": {k: t.params.get(k) for k in DIMENSIONS},
             "latency_ms": float(t.values[0]), "psnr_db": float(t.values[1]), "artifact_bytes": int(t.values[2]),
             "latency_source": str(t.user_attrs.get("latency_source", "")),
             "fidelity_source": str(t.user_attrs.get("fidelity_source", "")),
             "artifact": str(t.user_attrs.get("artifact", ""))} for t in front]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the front (also what the CLI prints)."""
    head = ["trial", *DIMENSIONS, "latency ms/image", "PSNR dB", "artifact bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["number"]), *(str(r["params"][k]) for k in DIMENSIONS), f"{r['latency_ms']:.3f}",
                 f"{r['psnr_db']:.2f}", str(r["artifact_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def plot(trials: list[FrozenTrial], front: list[FrozenTrial], path: Path, title: str) -> Path:
    """Two panels: latency vs PSNR and bytes vs PSNR; every complete trial grey, the front red."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    on_front = {t.number for t in front}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for ax, index, label in ((axes[0], 0, "latency per image (ms)"), (axes[1], 2, "artifact bytes (MB)")):
        scale = 1e-6 if index == 2 else 1.0
        rest = [t for t in done if t.number not in on_front]
        ax.scatter([t.values[index] * scale for t in rest], [t.values[1] for t in rest], c="0.6", s=22,
                   label="dominated")
        ax.scatter([t.values[index] * scale for t in front], [t.values[1] for t in front], c="tab:red", s=36,
                   label="Pareto front (all 3 objectives)")
        for t in front:
            ax.annotate(f"#{t.number} {t.params.get('precision')} s{t.params.get('steps')}",
                        (t.values[index] * scale, t.values[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("fidelity PSNR vs float (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_outputs(study: optuna.Study, out: Path, *, storage: str, model: str, soc: str, backend: str,
                  space: dict[str, list[Any]], requested: int) -> dict[str, Any]:
    """pareto.json (validated), pareto.md and pareto.png in ``out``; returns the JSON document."""
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(trials)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    document = {
        "schema_version": 1, "study": study.study_name, "storage": storage, "model": model, "soc": soc,
        "backend": backend, "objectives": [{"name": n, "direction": d} for n, d in OBJECTIVES], "space": space,
        "trials": {"requested": requested, "complete": counts[TrialState.COMPLETE], "failed": counts[TrialState.FAIL],
                   "running": counts[TrialState.RUNNING],
                   "other": counts[TrialState.PRUNED] + counts[TrialState.WAITING]},
        "front": front_rows(front),
    }
    for row in document["front"]:
        if not math.isfinite(row["latency_ms"]) or not math.isfinite(row["psnr_db"]):
            raise BadConfigError(f"trial {row['number']}: non-finite objective {row}")
    validate_pareto(document, str(out / PARETO_JSON))
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / PARETO_JSON, (json.dumps(document, indent=1) + "\n").encode())
    md = (f"# Pareto front: {model} on {soc} ({backend})\n\nStudy `{study.study_name}` in `{storage}`: "
          f"{document['trials']['complete']} complete, {document['trials']['failed']} failed of {requested}.\n"
          f"Latency: {', '.join(sorted({r['latency_source'] for r in document['front']})) or '-'}.\n\n"
          + table(document["front"]))
    _atomic_write(out / PARETO_MD, md.encode())
    plot(trials, front, out / PARETO_PNG, f"{model} on {soc}/{backend}: {len(front)} Pareto-optimal of "
         f"{document['trials']['complete']} complete trials")
    return document
